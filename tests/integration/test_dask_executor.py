"""The lifecycle's fan-out on Dask: the batches waiting for validation and the `train.search`
candidates run as mapped tasks on a real `distributed.LocalCluster` (two single-threaded worker
processes), and the outcome is the default executor's, number for number."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlops.errors import MlopsError
from mlops.settings import Workspace
from mlops.store import Store
from pipelines.ingest import ingest, load_source

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QUICK = [
    "train.patience=3",
    "train.search=[{hidden: [16], epochs: 6}, {hidden: [], epochs: 6}, {epochs: 1, lr: 0.00001}]",
    "compress.finetune_epochs=1",
    "compress.distill_epochs=2",
    "compress.latency_repeats=10",
    "serve.bento=false",
    "serve.check=false",
]
BATCHES = 3


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as c:
        yield c


def _ingest_pending(ws: Workspace) -> list[str]:
    """Batches ingested and never validated, as `mlops ingest` leaves them."""
    with Store.open(ws.database_url) as store:
        return [
            ingest(ws, store, load_source(ws, "ai4i", rows=1200, seed=seed)).batch.id
            for seed in range(1, BATCHES + 1)
        ]


def _outcome(ws: Workspace, result: Any) -> dict[str, Any]:
    """What a run decided, without times or paths: validations, the search, the model."""
    with Store.open(ws.database_url) as store:
        statuses = {b.id: b.status for b in store.list_batches()}
        model = store.get_model(result.steps["train"]["model"])
    search = model.lineage["search"]
    lock = yaml.safe_load((ws.root / "dvc.lock").read_text())["stages"]
    return {
        "statuses": statuses,
        "candidates": search["candidates"],
        "scores": [s["value"] for s in search["scores"]],
        "winner": search["winner"],
        # the weights and the loss curve (train_info.json holds the duration: not compared)
        "outs": {
            o["path"]: o["md5"] for o in lock["train"]["outs"] if "train_info" not in o["path"]
        },
        "metrics": {k: model.metrics[k] for k in ("pr_auc", "roc_auc", "f1")},
        "batch_ids": model.batch_ids,
    }


def test_fan_out_runs_on_dask_and_matches_the_default_executor(
    ws: Workspace, tmp_path: Path, cluster: Any, prefect_server: None
) -> None:
    from flows.lifecycle import run_lifecycle
    from pipelines.init import init_workspace

    other = init_workspace(tmp_path / "ws-dask")
    batches = _ingest_pending(ws)
    assert _ingest_pending(other) == batches  # same bytes, same ids

    default = run_lifecycle(ws.root, QUICK)
    on_dask = run_lifecycle(other.root, QUICK, executor=f"dask={cluster.scheduler_address}")

    assert default.task_runner == "ThreadPoolTaskRunner"
    assert on_dask.task_runner == "DaskTaskRunner"
    # The Dask scheduler ran the two pending validations and the three candidates.
    ran = {k: v.state_counts["memory"] for k, v in cluster.scheduler.task_prefixes.items()}
    assert ran.get("validate_task") == BATCHES - 1 and ran.get("candidate_task") == 3, ran

    for result in (default, on_dask):
        assert result.batch_id == batches[-1]  # the newest, validated first
        pending = result.steps["validate-pending"]
        assert pending["batches"] == ", ".join(batches[:-1])
        assert pending["outcomes"] == "passed, passed"
        assert result.steps["train"]["search"].startswith("3 candidates, chose ")
    expected, got = _outcome(ws, default), _outcome(other, on_dask)
    assert set(expected["statuses"].values()) == {"passed"}
    assert sorted(expected["batch_ids"]) == sorted(batches)  # trained on all three
    assert expected["winner"] != 2  # the crippled candidate lost
    assert got == expected


def test_a_bad_executor_is_one_line() -> None:
    from flows.executors import Executor

    assert Executor.parse(None).task_runner() is None
    assert str(Executor.parse("dask=tcp://scheduler:8786")) == "dask=tcp://scheduler:8786"
    for bad in ("ray", "dask=scheduler:8786"):
        with pytest.raises(MlopsError, match="expected default, dask"):
            Executor.parse(bad)
