"""Resume across runs: a lifecycle run that failed at the compress step, run again with nothing
changed, skips ingest, validate and train (Prefect task states: Cached, from content keys) and
completes from compress on."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import pytest

from mlops.settings import Workspace
from mlops.store import Store

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUN = [
    "ingest.rows=5000",
    "train.epochs=10",
    "train.patience=3",
    "compress.finetune_epochs=1",
    "compress.distill_epochs=3",
    "compress.latency_repeats=20",
    "serve.bento=false",
    "serve.check=false",
    "monitor.demo_rows=0",
]


def _task_states(flow_run_id: UUID) -> dict[str, str]:
    """Each task run of a flow run: its task name -> its state's name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read() -> list[Any]:
        async with get_client() as client:
            return await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )

    return {r.name.rsplit("-", 1)[0]: str(r.state_name) for r in asyncio.run(read())}


def test_a_run_failed_at_compress_resumes_there(ws: Workspace, prefect_server: None) -> None:
    from flows.lifecycle import lifecycle

    # Something in the way of the compress step's report folder: it fails there.
    blocker = ws.reports_dir / "compress"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a folder")
    first = lifecycle(workspace=str(ws.root), overrides=RUN, return_state=True)
    assert first.is_failed()
    with Store.open(ws.database_url) as store:
        (trained,) = store.list_models()
    assert trained.stage == "staging", "the test needs a staged model for compress to run"
    done = _task_states(first.state_details.flow_run_id)
    assert done["ingest"] == done["validate"] == "Completed"
    assert done["compress"] == "Failed"

    blocker.unlink()
    second = lifecycle(workspace=str(ws.root), overrides=RUN, return_state=True)
    assert second.is_completed(), second.message
    states = _task_states(second.state_details.flow_run_id)
    assert states["ingest"] == states["validate"] == "Cached", states
    assert [v for k, v in states.items() if k.startswith("train")] == ["Cached"], states
    assert states["compress"] == "Completed"
    steps = second.result().steps
    assert steps["train"]["model"] == trained.ref
    with Store.open(ws.database_url) as store:
        models = store.list_models()
    # nothing trained twice: the version and its compressed child
    assert [m.ref for m in models] == [trained.ref, steps["compress"]["model"]]
