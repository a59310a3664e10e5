"""The lifecycle flow on a real (ephemeral) Prefect server, on small data."""

from __future__ import annotations

from typing import Any

import pytest

from mlops.params import load_params
from mlops.predictions import read_log
from mlops.settings import Workspace
from mlops.store import Store

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SMALL = [
    "ingest.rows=3000",
    "train.epochs=4",
    "train.patience=2",
    "compress.finetune_epochs=1",
    "compress.distill_epochs=3",
    "compress.latency_repeats=20",
]


def test_lifecycle_runs_every_step_and_records_lineage(ws: Workspace, prefect_server: None) -> None:
    from flows.lifecycle import lifecycle

    # The demo's drift scenario: +3 K, and a process temperature regulator failing, so that a
    # retrain on 3,000 new rows is clearly better than production (the gate is statistical).
    drift = "monitor.demo_drift=ambient_shift_k=3,decouple_temperatures=1"
    quick = ["rollout.min_requests=40"]  # per step: tests/serve_api judges the rules themselves
    state = lifecycle(workspace=str(ws.root), overrides=[*SMALL, drift, *quick], return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    steps = result.steps
    assert steps["validate"]["outcome"] == "passed"

    store = Store.open(ws.database_url)
    try:
        batch = store.get_batch(result.batch_id)
        assert batch.status == "passed" and batch.rows == 3000
        model = store.get_model(steps["train"]["model"])
        # Lineage: the model traces back to the exact batch and its DVC hash.
        assert model.batch_ids == [batch.id]
        assert model.stage in ("staging", "rejected")
        if model.stage == "staging":
            child = steps["compress"]["model"]
            assert child is None or store.get_model(child).parent_id == model.id
            # the staged version (the compressed child when the gate staged it) is packaged,
            # made production (there was none) and answered through a real server
            deploy = steps["deploy"]
            deployed = store.get_model(deploy["production"])
            # (production then; the demo's retrain has replaced it since)
            assert "production" in [e.to_stage for e in store.stage_history(deployed.ref)]
            assert deployed.ref in (model.ref, child)
            package = store.get_package(deployed.ref)
            assert package is not None and package.bento_tag == deploy["bento"] != ""
            assert deploy["served"] == f"3 records answered by {deployed.ref}"
            # then the demo's traffic (ambient +3 K) went through a server and was monitored
            monitored = steps["monitor"]
            (report,) = store.list_drift_reports(deployed.name)
            assert monitored["report"] == report.id and report.rows == 2000
            assert report.model_version_id == deployed.id
            assert {"Air temperature [K]", "Process temperature [K]"} <= set(
                monitored["drifted"].split(", ")
            )
            assert (ws.home / str(report.path)).is_file()
            _assert_the_loop_closed(ws, store, steps, deployed)
        else:
            assert "deploy" not in steps
    finally:
        store.close()


def _assert_the_loop_closed(ws: Workspace, store: Store, steps: dict, deployed: Any) -> None:
    """The demo's alert became a drift event the store approved; the scenario's batch was
    ingested and validated; the retrain subflow claimed the event, its version passed the gate
    and was rolled out step by step on the demo client's traffic (none of it failed) and
    promoted."""
    (event,) = store.list_drift_events(deployed.name)
    assert steps["monitor"]["drift_event"] == event.id and event.decision == "retrain"
    assert event.flow_run_id is not None  # claimed by the retrain run
    assert steps["drift-validate"]["outcome"] in ("passed", "warned")
    new_batch = store.get_batch(steps["drift-data"]["batch_id"])
    assert "decouple_temperatures=1" in new_batch.source
    retrain = steps["retrain"]
    assert retrain["drift_event"] == event.id
    assert retrain["traffic"].endswith(" 0 failed"), retrain["traffic"]
    production = store.production_model(deployed.name)
    assert production is not None and production.id != deployed.id
    trained = production if production.parent_id is None else store.get_model(production.parent_id)
    assert new_batch.id in trained.batch_ids  # the new production learned from the new data
    assert "promoted" in retrain["rollout"], retrain
    audit = [e for e in store.deployment_events(deployed.name) if e.actor == "rollout"]
    params = load_params(ws.params_path)
    assert [e.share for e in audit if e.action == "canary"] == params.rollout.steps
    assert audit[-1].action == "promote"
    # the served log holds the canary's answers
    log = read_log(ws.predictions_dir, deployed.name)
    assert (log["route"] == "canary").any() and (log["version"] == production.version).any()


def test_a_failing_batch_stops_the_flow_with_a_docs_link(
    ws: Workspace, prefect_server: None
) -> None:
    from flows.lifecycle import lifecycle

    # 40 K warmer ambient air: far outside the suite's plausible Kelvin range.
    overrides = [*SMALL, "ingest.drift=ambient_shift_k=40", "validate.policy=block"]
    state = lifecycle(workspace=str(ws.root), overrides=overrides, return_state=True)
    assert state.is_failed()
    message = str(state.message) + repr(state.result(raise_on_failure=False))
    assert "Air temperature [K]" in message and "data docs" in message.lower()

    store = Store.open(ws.database_url)
    try:
        (batch,) = store.list_batches()
        assert batch.status == "failed"
        assert store.list_models() == []  # nothing trained on a blocked batch
    finally:
        store.close()


def test_running_twice_with_nothing_new_adds_no_model_version(
    ws: Workspace, prefect_server: None
) -> None:
    """`make run` twice: the second run retrains nothing (DVC) and reuses the compressed child."""
    from flows.lifecycle import lifecycle

    quick = [*SMALL, "serve.bento=false", "serve.check=false"]
    first = lifecycle(workspace=str(ws.root), overrides=quick, return_state=True)
    assert first.is_completed(), first.message
    with Store.open(ws.database_url) as store:
        before = [(m.ref, m.stage) for m in store.list_models()]
    second = lifecycle(workspace=str(ws.root), overrides=quick, return_state=True)
    assert second.is_completed(), second.message
    steps = second.result().steps
    with Store.open(ws.database_url) as store:
        after = [(m.ref, m.stage) for m in store.list_models()]
    assert after == before and len(before) >= 1
    assert steps["ingest"]["new"] is False and steps["train"]["model"] == before[0][0]
    if "reused" in steps["compress"]:
        assert steps["compress"]["reused"] is True
    if "deploy" in steps:  # packaged once, by the first run
        assert steps["deploy"]["reused"] is True
