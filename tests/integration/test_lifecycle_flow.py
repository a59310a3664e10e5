"""The lifecycle flow on a real (ephemeral) Prefect server, on small data."""

from __future__ import annotations

import pytest

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

    state = lifecycle(workspace=str(ws.root), overrides=SMALL, return_state=True)
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
            assert store.production_model(deployed.name).ref == deployed.ref
            assert deployed.ref in (model.ref, child)
            package = store.get_package(deployed.ref)
            assert package is not None and package.bento_tag == deploy["bento"] != ""
            assert deploy["served"] == f"3 records answered by {deployed.ref}"
            # then the demo's traffic (ambient +3 K) went through a server and was monitored
            log = read_log(ws.predictions_dir, deployed.name)
            assert len(log) == 3 + 2000 and set(log["version"]) == {deployed.version}
            monitored = steps["monitor"]
            (report,) = store.list_drift_reports(deployed.name)
            assert monitored["report"] == report.id and report.rows == 2000
            assert report.model_version_id == deployed.id
            assert {"Air temperature [K]", "Process temperature [K]"} <= set(
                monitored["drifted"].split(", ")
            )
            assert (ws.home / str(report.path)).is_file()
        else:
            assert "deploy" not in steps
    finally:
        store.close()


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
