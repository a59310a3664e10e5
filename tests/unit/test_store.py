"""The metadata store, on SQLite and PostgreSQL: migrations, records, stages, transactions."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest
from sqlalchemy import inspect

from mlops.errors import MlopsError, NotFoundError
from mlops.store import Store, db

EXPECTED_TABLES = {
    "datasets",
    "batches",
    "validations",
    "training_runs",
    "model_versions",
    "model_version_batches",
    "stage_events",
    "deployments",
    "drift_reports",
    "model_aliases",
    "deployment_states",
    "deployment_events",
    "packages",
    "reviews",
    "labels",
    "alembic_version",
}


def _batch(store: Store, batch_id: str = "ai4i-abc", **kw: object) -> None:
    store.upsert_dataset("ai4i", "classification", {"name": "ai4i", "target": "y"})
    args = dict(
        batch_id=batch_id,
        dataset="ai4i",
        source="ai4i:rows=10",
        path=f"data/raw/{batch_id}.parquet",
        dvc_md5="0" * 32,
        rows=10,
        schema_hash="s",
    )
    args.update(kw)
    store.add_batch(**args)  # type: ignore[arg-type]


def test_migrations_upgrade_an_empty_database(db_url: str) -> None:
    engine = db.make_engine(db_url)
    assert db.current_revision(engine) is None
    assert db.upgrade(engine) == db.head_revision()
    assert set(inspect(engine).get_table_names()) >= EXPECTED_TABLES
    # Upgrading again is a no-op, not an error.
    assert db.upgrade(engine) == db.head_revision()
    engine.dispose()


def test_open_migrates_on_first_use(db_url: str) -> None:
    store = Store.open(db_url)
    assert store.revision() == db.head_revision()
    store.close()


def test_same_batch_twice_is_one_batch(db_url: str) -> None:
    store = Store.open(db_url)
    _batch(store)
    _batch(store)
    assert [b.id for b in store.list_batches()] == ["ai4i-abc"]
    assert store.get_batch("ai4i-a").id == "ai4i-abc"  # a unique prefix finds it
    with pytest.raises(NotFoundError, match="no batch 'nope'"):
        store.get_batch("nope")
    store.close()


def test_validation_sets_batch_status_and_trainability(db_url: str) -> None:
    store = Store.open(db_url)
    _batch(store, "ai4i-good")
    _batch(store, "ai4i-bad")
    store.add_validation(
        batch_id="ai4i-good",
        suite="ai4i",
        success=True,
        policy="block",
        outcome="passed",
        evaluated=5,
        failures=[],
        docs_path=None,
    )
    store.add_validation(
        batch_id="ai4i-bad",
        suite="ai4i",
        success=False,
        policy="quarantine",
        outcome="quarantined",
        evaluated=5,
        failures=[{"column": "x", "rule": "not_null"}],
        docs_path="docs.html",
        batch_path="data/quarantine/ai4i-bad.parquet",
    )
    assert [b.id for b in store.trainable_batches("ai4i")] == ["ai4i-good"]
    bad = store.get_batch("ai4i-bad")
    assert (bad.status, bad.path) == ("quarantined", "data/quarantine/ai4i-bad.parquet")
    latest = store.latest_validation("ai4i-bad")
    assert latest is not None and latest.failures == [{"column": "x", "rule": "not_null"}]
    store.close()


def test_failed_transaction_leaves_nothing(db_url: str) -> None:
    store = Store.open(db_url)
    _batch(store, "ai4i-one")
    with pytest.raises(MlopsError, match="unknown validation outcome"):
        store.add_validation(
            batch_id="ai4i-one",
            suite="s",
            success=True,
            policy="block",
            outcome="bogus",
            evaluated=0,
            failures=[],
            docs_path=None,
        )
    assert store.list_validations() == []
    assert store.get_batch("ai4i-one").status == "ingested"
    store.close()


def test_model_versions_stages_and_lineage(db_url: str) -> None:
    store = Store.open(db_url)
    _batch(store, "ai4i-b1")
    run = store.start_run(dataset="ai4i", params={"lr": 0.1}, batch_ids=["ai4i-b1"])
    store.finish_run(
        run.id, status="succeeded", metrics={"pr_auc": 0.8}, device="cpu", duration_s=1.5
    )
    v1 = store.register_model(
        name="ai4i",
        dataset="ai4i",
        path="m1",
        batch_ids=["ai4i-b1"],
        run_id=run.id,
        lineage={"git": None},
    )
    v2 = store.register_model(name="ai4i", dataset="ai4i", path="m2", batch_ids=["ai4i-b1"])
    assert (v1.version, v2.version, v1.ref) == (1, 2, "ai4i:1")
    assert v1.batch_ids == ["ai4i-b1"] and store.get_run(run.id).status == "succeeded"

    store.set_stage("ai4i:1", "staging", action="gate", reason="beat the baseline", actor="gate")
    store.set_stage("ai4i:1", "production", action="promote", reason="first")
    store.set_stage("2", "staging", action="gate", reason="better", actor="gate")
    store.set_stage("2", "production", action="promote", reason="better", actor="rm")
    # Exactly one production version per model name; the old one is archived, with an audit trail.
    assert [m.version for m in store.list_models(stage="production")] == [2]
    assert store.get_model("ai4i@production").version == 2
    assert store.get_model(v1.id).stage == "archived"
    history = [(e.from_stage, e.to_stage, e.action) for e in store.stage_history("ai4i:1")]
    assert history == [
        (None, "candidate", "register"),
        ("candidate", "staging", "gate"),
        ("staging", "production", "promote"),
        ("production", "archived", "archive"),
    ]
    with pytest.raises(NotFoundError):
        store.get_model("ai4i:9")
    with pytest.raises(MlopsError, match="unknown stage"):
        store.set_stage("ai4i:1", "prod", action="promote")
    store.close()


def _versions(store: Store, n: int) -> list[str]:
    store.upsert_dataset("m", "classification", {})
    return [store.register_model(name="m", dataset="m", path=f"p{i}").ref for i in range(n)]


@pytest.mark.parametrize(
    ("setup", "to", "action", "match"),
    [
        ([("candidate", "rejected", "gate")], "staging", "promote",
         r"m:1 is rejected: it cannot go to staging because the gate did not stage it; .*--override"),  # noqa: E501
        ([], "production", "promote", "m:1 is candidate: it cannot go to production because it has not passed the gate"),  # noqa: E501
        ([], "staging", "promote", "m:1 is candidate: it cannot go to staging"),
        ([("candidate", "staging", "gate")], "rejected", "gate", "m:1 is staging: gate cannot move it to rejected"),  # noqa: E501
        ([("candidate", "staging", "gate")], "staging", "gate", "m:1 is already staging"),
        ([], "staging", "override", "an override needs a reason"),
    ],
    ids=["rejected-to-staging", "candidate-to-production", "candidate-to-staging-by-hand",
         "gate-twice", "same-stage", "override-without-reason"],
)  # fmt: skip
def test_forbidden_transitions_are_refused_in_one_line(
    db_url: str, setup: list[tuple[str, str, str]], to: str, action: str, match: str
) -> None:
    store = Store.open(db_url)
    (ref,) = _versions(store, 1)
    for _, stage, how in setup:
        store.set_stage(ref, stage, action=how, reason="setup", actor="gate")
    before = store.stage_history(ref)
    with pytest.raises(MlopsError, match=match) as info:
        store.set_stage(ref, to, action=action, reason="" if action == "override" else "try")
    assert "\n" not in str(info.value)
    assert store.stage_history(ref) == before  # refused: nothing moved, nothing audited
    store.close()


def test_override_is_allowed_with_a_reason_and_audited(db_url: str) -> None:
    store = Store.open(db_url)
    ref, _ = _versions(store, 2)
    store.set_stage(ref, "rejected", action="gate", reason="worse", actor="gate")
    store.set_stage(ref, "production", action="override", reason="hotfix: v2 broke", actor="rm")
    assert store.get_model(ref).stage == "production"
    last = store.stage_history(ref)[-1]
    assert (last.from_stage, last.to_stage, last.action, last.reason, last.actor) == (
        "rejected", "production", "override", "hotfix: v2 broke", "rm",
    )  # fmt: skip
    store.close()


def test_rollback_restores_the_previous_production_version(db_url: str) -> None:
    store = Store.open(db_url)
    one, two, three = _versions(store, 3)
    with pytest.raises(MlopsError, match="no previous production version"):
        store.rollback("m")
    for ref in (one, two, three):
        store.set_stage(ref, "staging", action="gate", reason="ok", actor="gate")
        store.set_stage(ref, "production", action="promote", reason="release")
    assert store.rollback("m", reason="v3 misbehaves", actor="rm").ref == two
    assert [m.ref for m in store.list_models(stage="production")] == [two]
    assert store.get_model(three).stage == "archived"
    assert store.rollback("m").ref == three  # the one moved out of production most recently
    assert (store.stage_history(two)[-1].action, store.stage_history(two)[-1].to_stage) == (
        "rollback", "archived",
    )  # fmt: skip
    store.close()


def test_deployments_and_drift_reports_append(db_url: str) -> None:
    store = Store.open(db_url)
    store.upsert_dataset("ai4i", "classification", {})
    mv = store.register_model(name="ai4i", dataset="ai4i", path="m")
    store.add_deployment(mv.ref, action="rollout", traffic=1.0, actor="rm")
    store.add_deployment(mv.ref, action="rollback", traffic=0.0, actor="rm")
    assert [d.action for d in store.list_deployments()] == ["rollout", "rollback"]
    with pytest.raises(MlopsError, match="traffic share"):
        store.add_deployment(mv.ref, action="canary", traffic=1.5)
    r = store.add_drift_report(
        model_version_id=mv.id,
        reference="b1",
        rows=100,
        drift_share=0.4,
        drifted=True,
        details={"cols": ["x"]},
        path=None,
    )
    assert store.list_drift_reports()[0].id == r.id
    store.close()


def _ingest_many(url: str, prefix: str, n: int) -> None:
    store = Store.open(url)
    store.upsert_dataset("ai4i", "classification", {})
    for i in range(n):
        store.add_batch(
            batch_id=f"{prefix}-{i}",
            dataset="ai4i",
            source="s",
            path="p",
            dvc_md5="m",
            rows=1,
            schema_hash="h",
        )
        store.register_model(name="ai4i", dataset="ai4i", path=f"{prefix}-{i}")
    store.close()


def test_two_processes_on_a_fresh_store(db_url: str) -> None:
    """Both processes migrate the empty database and write at once; both succeed."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_ingest_many, args=(db_url, p, 20)) for p in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    store = Store.open(db_url)
    assert len(store.list_batches()) == 40
    # Registrations raced for version numbers; each still got its own.
    assert sorted(m.version for m in store.list_models("ai4i")) == list(range(1, 41))
    store.close()


def test_bad_database_url_is_one_line() -> None:
    with pytest.raises(MlopsError, match="not a database URL"):
        Store.open("not a url")


def test_sqlite_uses_wal(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 's.db'}")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    store.close()


# -- aliases and deployment state under concurrency ---------------------------------------------


def _deploy_worker(url: str, p: int, out: str) -> None:
    """One release manager's afternoon: promote, canary, roll back, shadow; refusals are fine."""
    import json

    store = Store.open(url)
    done = []
    ops = [
        ("promote", f"m:{p + 1}"),
        ("canary", f"m:{(p + 1) % 8 + 1}"),
        ("rollback", ""),
        ("shadow", f"m:{(p + 2) % 8 + 1}"),
    ]
    for op, ref in ops:
        try:
            if op == "promote":
                store.set_stage(ref, "production", action="promote", reason=f"p{p}", actor=f"p{p}")
            elif op == "canary":
                store.set_canary(ref, 0.1, actor=f"p{p}")
            elif op == "rollback":
                store.rollback("m", reason=f"p{p}", actor=f"p{p}")
            else:
                store.set_shadow(ref, actor=f"p{p}")
            done.append(op)
        except MlopsError:
            pass  # refused (already archived, nothing to roll back to): nothing changed
    store.close()
    Path(out).write_text(json.dumps(done))


def _replay(events: list) -> dict:  # type: ignore[type-arg]
    """The deployment state the audit trail describes, applied in revision order."""
    state: dict = {"production": None, "canary": None, "share": 0.0, "shadow": None}  # type: ignore[type-arg]
    for e in sorted(events, key=lambda e: e.revision):
        v = e.model_version_id
        if e.action in ("promote", "override", "rollback"):
            state["production"] = v
            if state["canary"] == v:
                state["canary"], state["share"] = None, 0.0
            if state["shadow"] == v:
                state["shadow"] = None
        elif e.action == "canary":
            state["canary"], state["share"] = v, e.share
        elif e.action == "shadow":
            state["shadow"] = v
    return state


def test_eight_processes_promoting_canarying_and_rolling_back_leave_one_consistent_state(
    db_url: str, tmp_path: Path
) -> None:
    import json

    store = Store.open(db_url)
    store.upsert_dataset("m", "classification", {})
    for i in range(8):
        ref = store.register_model(name="m", dataset="m", path=f"p{i}").ref
        store.set_stage(ref, "staging", action="gate", reason="ok", actor="gate")
    ctx = mp.get_context("spawn")
    outs = [tmp_path / f"done-{p}.json" for p in range(8)]
    procs = [ctx.Process(target=_deploy_worker, args=(db_url, p, str(outs[p]))) for p in range(8)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(180)
    assert [proc.exitcode for proc in procs] == [0] * 8
    done = [op for out in outs for op in json.loads(out.read_text())]

    aliases = store.list_aliases("m")
    production = [a for a in aliases if a.alias == "production"]
    assert len(production) == 1  # exactly one production alias ...
    in_production = store.list_models(name="m", stage="production")
    assert [m.id for m in in_production] == [production[0].model_version_id]  # ... and stage
    state = store.deployment_state("m")
    assert state is not None and state.production_version_id == production[0].model_version_id

    # every action that succeeded is in the audit, once, each with its own revision
    events = store.deployment_events("m")
    assert sorted(e.action for e in events) == sorted(done)
    assert sorted(e.revision for e in events) == list(range(1, len(events) + 1))
    assert state.revision == len(events) == store.deployment_revision("m")
    # and the state is what the audit trail says, replayed in order
    replayed = _replay(events)
    assert (state.production_version_id, state.canary_version_id, state.shadow_version_id) == (
        replayed["production"], replayed["canary"], replayed["shadow"],
    )  # fmt: skip
    assert state.canary_share == pytest.approx(replayed["share"])
    for alias, version in (
        ("canary", state.canary_version_id),
        ("shadow", state.shadow_version_id),
    ):
        assert [a.model_version_id for a in aliases if a.alias == alias] == (
            [version] if version else []
        )
    assert done.count("promote") >= 1
    store.close()


def test_a_store_with_a_production_version_is_carried_forward(tmp_path: Path) -> None:
    """Migration 0003 gives an existing production version its alias and deployment state."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = db.make_engine(url)
    db.upgrade(engine, "0002")
    store = Store(engine)
    store.upsert_dataset("m", "classification", {})
    ref = store.register_model(name="m", dataset="m", path="p").ref
    with engine.begin() as conn:  # as revision 0002 left it: a stage, no alias, no state
        conn.exec_driver_sql("UPDATE model_versions SET stage = 'production'")
    db.upgrade(engine)
    (alias,) = store.list_aliases("m")
    assert (alias.alias, f"m:{alias.version}") == ("production", ref)
    state = store.deployment_state("m")
    assert state is not None and state.revision == 1
    assert [e.action for e in store.deployment_events("m")] == ["promote"]
    store.close()


def test_packages_reviews_labels_and_server_reports(db_url: str) -> None:
    store = Store.open(db_url)
    _batch(store, "ai4i-b1")
    v1 = store.register_model(name="ai4i", dataset="ai4i", path="m1", batch_ids=["ai4i-b1"])
    v2 = store.register_model(name="ai4i", dataset="ai4i", path="m2", batch_ids=["ai4i-b1"])
    # a package per version, updated in place
    assert store.get_package(v1.id) is None
    store.add_package(v1.ref, model_tag="ai4i:v1", bento_tag="")
    assert store.add_package(v1.id, model_tag="ai4i:v1", bento_tag="b:v1").bento_tag == "b:v1"
    assert store.get_package(v1.ref).model_tag == "ai4i:v1"  # type: ignore[union-attr]
    # a server's refusal is audited without moving the revision
    store.set_stage(v1.id, "production", action="override", reason="setup")
    revision = store.deployment_revision("ai4i")
    event = store.record_serving_event("ai4i", "swap-failed", v2.id, reason="sha256", actor="w1")
    assert (event.action, event.revision, event.model_version_id) == (
        "swap-failed",
        revision,
        v2.id,
    )
    assert store.deployment_revision("ai4i") == revision
    with pytest.raises(MlopsError, match="unknown serving action"):
        store.record_serving_event("ai4i", "promote", v2.id, reason="no")
    # reviews: queued, listed, resolved once into a label
    item = {
        "model_name": "ai4i", "route": "shadow", "production_version_id": v1.id,
        "other_version_id": v2.id, "inputs": {"Torque [Nm]": 40.0},
        "production_output": {"prediction": 0}, "other_output": {"prediction": 1},
    }  # fmt: skip
    assert store.add_reviews([{**item, "request_id": "r1", "record": 0},
                              {**item, "request_id": "r1", "record": 3}]) == 2  # fmt: skip
    open_ = store.list_reviews("ai4i")
    assert [(r.request_id, r.record, r.status) for r in open_] == [
        ("r1", 0, "open"),
        ("r1", 3, "open"),
    ]
    label = store.resolve_review(open_[1].id, "1", actor="eng")
    assert (label.request_id, label.record, label.value, label.source) == ("r1", 3, "1", "review")
    assert [r.record for r in store.list_reviews("ai4i")] == [0]
    assert store.list_reviews(status="resolved")[0].resolved_by == "eng"
    with pytest.raises(MlopsError, match="already resolved"):
        store.resolve_review(open_[1].id, "0")
    with pytest.raises(NotFoundError):
        store.resolve_review(999, "0")
    # a later label for the same record replaces the earlier one
    store.add_label("ai4i", "r1", 3, "0", source="feedback", actor="ops")
    assert [(x.value, x.source) for x in store.list_labels("ai4i")] == [("0", "feedback")]
    store.close()


def test_drift_events_debounce_and_cap(db_url: str) -> None:
    """Five alerts in a row: the first starts a retrain, the cooldown suppresses the rest, each
    with its reason; without a cooldown the cap stops a storm; a run claims its event once."""
    store = Store.open(db_url)
    store.upsert_dataset("ai4i", "classification", {})
    decided = [
        store.record_drift_event(
            "ai4i", drift_report_id=None, cooldown_s=3600, max_retrains=3, window_s=86400
        )
        for _ in range(5)
    ]
    assert [e.decision for e in decided] == ["retrain"] + ["suppressed"] * 4
    assert all(f"drift event {decided[0].id} started a retrain" in e.reason for e in decided[1:])
    # a run claims the event that started it, once; a suppressed one is never claimed
    assert store.claim_drift_event("ai4i", "cron-run") is None  # not started by an event
    assert store.claim_drift_event("ai4i", "run-x", event_id=decided[1].id) is None
    claimed = store.claim_drift_event("ai4i", "run-1", event_id=decided[0].id)
    assert claimed is not None and claimed.id == decided[0].id and claimed.flow_run_id == "run-1"
    assert store.claim_drift_event("ai4i", "run-2", event_id=decided[0].id) is None

    store.upsert_dataset("other", "classification", {})
    storm = [
        store.record_drift_event(
            "other", drift_report_id=None, cooldown_s=0, max_retrains=2, window_s=86400
        ).decision
        for _ in range(4)
    ]
    assert storm == ["retrain", "retrain", "suppressed", "suppressed"]
    assert "cap: 2 retrains" in store.list_drift_events("other")[-1].reason
    assert len(store.list_drift_events()) == 9
    store.close()


def _record_events(url: str, n: int) -> None:
    store = Store.open(url)
    for _ in range(n):
        store.record_drift_event(
            "ai4i", drift_report_id=None, cooldown_s=3600, max_retrains=3, window_s=86400
        )
    store.close()


def test_two_processes_raising_drift_events_start_one_retrain(db_url: str) -> None:
    store = Store.open(db_url)
    store.upsert_dataset("ai4i", "classification", {})
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_record_events, args=(db_url, 10)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    decisions = [e.decision for e in store.list_drift_events("ai4i")]
    assert len(decisions) == 20 and decisions.count("retrain") == 1
    store.close()
