"""`mlops train` end to end: DVC rebuilds the model from data and params, and reproduces it."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from mlops.settings import Workspace
from mlops.store import Store
from pipelines.ingest import ingest, load_source

pytestmark = pytest.mark.integration

FAST = ["--set", "train.epochs=3", "--set", "train.hidden=[16]"]


def _batch(ws: Workspace, rows: int = 1500, seed: int = 1, outcome: str = "passed") -> str:
    store = Store.open(ws.database_url)
    try:
        batch = ingest(ws, store, load_source(ws, "ai4i", rows=rows, seed=seed)).batch
        if outcome:
            store.add_validation(
                batch_id=batch.id,
                suite="test",
                success=outcome != "failed",
                policy="block",
                outcome=outcome,
                evaluated=0,
                failures=[],
                docs_path=None,
            )
        return batch.id
    finally:
        store.close()


def _models(ws: Workspace) -> list:  # type: ignore[type-arg]
    store = Store.open(ws.database_url)
    try:
        return store.list_models()
    finally:
        store.close()


def _dvc(ws: Workspace, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["dvc", *args], cwd=ws.root, capture_output=True, text=True, check=True)


@pytest.mark.slow
def test_train_registers_and_dvc_reproduces(ws: Workspace, mlops_cli) -> None:  # type: ignore[no-untyped-def]
    batch_id = _batch(ws)
    res = mlops_cli("-w", ws.root, "train", *FAST, "--json")
    assert res.exit_code == 0, res.stderr
    record = json.loads(res.stdout)
    assert record["version"] == 1 and record["stage"] in ("staging", "rejected")
    assert record["batch_ids"] == [batch_id]
    assert record["metrics"]["primary_metric"] == "pr_auc"
    assert {"pr_auc", "roc_auc", "f1", "precision", "recall", "confusion_matrix"} <= set(
        record["metrics"]
    )
    assert "pr_auc" in record["metrics"]["baseline"]
    # --set went into params.yaml, so `dvc repro` alone rebuilds this very model
    params = yaml.safe_load(ws.params_path.read_text())
    assert params["train"]["epochs"] == 3 and params["train"]["hidden"] == [16]
    assert "# One section per stage" in ws.params_path.read_text()  # comments kept
    selection = json.loads((ws.root / "data" / "selected_batches.json").read_text())
    assert [b["id"] for b in selection["batches"]] == [batch_id]

    metrics = ws.root / "artifacts" / "metrics.json"
    first = metrics.read_bytes()
    # nothing changed: DVC runs nothing and the metrics file is untouched
    again = _dvc(ws, "repro")
    assert "Running stage" not in again.stdout
    for stage in ("prepare", "train", "evaluate"):
        assert f"Stage '{stage}' didn't change, skipping" in again.stdout
    assert metrics.read_bytes() == first
    assert "up to date" in _dvc(ws, "status").stdout

    # forced: every stage runs again from data and params, and reaches the same metrics
    forced = _dvc(ws, "repro", "--force")
    assert forced.stdout.count("Running stage") == 3
    assert metrics.read_bytes() == first

    shown = _dvc(ws, "metrics", "show").stdout
    assert "model.pr_auc" in shown and "baseline.pr_auc" in shown
    _dvc(ws, "plots", "show", "-o", str(ws.home / "plots"))
    assert (ws.home / "plots" / "index.html").is_file()
    assert (ws.root / "artifacts" / "train_curve.png").stat().st_size > 0
    curve = (ws.root / "artifacts" / "plots" / "train_curve.csv").read_text().splitlines()
    assert curve[0] == "epoch,train_loss,val_loss,lr" and len(curve) == 4

    # same data, weights and metrics through `mlops train`: no second, identical version
    res = mlops_cli("-w", ws.root, "train", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["version"] == 1
    assert len(_models(ws)) == 1


@pytest.mark.slow
def test_models_list_and_show_lineage(ws: Workspace, mlops_cli) -> None:  # type: ignore[no-untyped-def]
    batch_id = _batch(ws)
    assert mlops_cli("-w", ws.root, "train", *FAST).exit_code == 0

    listed = mlops_cli("-w", ws.root, "models", "list", "--json")
    assert [m["version"] for m in json.loads(listed.stdout)] == [1]
    table = mlops_cli("-w", ws.root, "models", "list")
    assert "ai4i:1" in table.stdout

    shown = json.loads(mlops_cli("-w", ws.root, "models", "show", "ai4i:1", "--json").stdout)
    lineage = shown["lineage"]
    assert lineage["batches"][0]["id"] == batch_id
    assert lineage["batches"][0]["validation"]["outcome"] == "passed"
    assert lineage["batches"][0]["dvc_md5"]
    assert lineage["params"]["train"]["epochs"] == 3
    # `mlops init` made the first commit; the ingested batch's .dvc file is not committed
    assert len(lineage["git"]["commit"]) == 40 and lineage["git"]["dirty"] is True
    assert len(lineage["dvc_lock_hash"]) == 64
    assert set(lineage["outs"]) == {"prepare", "train", "evaluate"}
    assert lineage["device"] == "cpu" and lineage["duration_s"] > 0
    assert shown["stage_history"][0]["to_stage"] == "candidate"
    for part in ("model/manifest.json", "prepared/test.parquet", "reports/metrics.json"):
        assert (ws.version_dir(shown["path"]) / part).is_file(), part

    text = mlops_cli("-w", ws.root, "models", "show", "1").stdout
    for needle in (
        batch_id,
        "validation",
        "dvc.lock sha256",
        "git commit",
        "device: cpu",
        "params.train",
        "stage history",
        "gate decision",
        "pr_auc",
    ):
        assert needle in text, needle


# -- bad input: one clear line, nothing registered ---------------------------------------------


def _fails(ws: Workspace, mlops_cli, *args: str, match: str) -> str:  # type: ignore[no-untyped-def]
    before = ws.params_path.read_text() if ws.params_path.exists() else ""
    res = mlops_cli("-w", ws.root, "train", *args)
    assert res.exit_code == 2, res.stdout + res.stderr
    # progress lines may come first; the error is one line, the last
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("error:") and match in line, res.stderr
    assert _models(ws) == []
    return before


def test_no_validated_batch(ws: Workspace, mlops_cli) -> None:  # type: ignore[no-untyped-def]
    _fails(ws, mlops_cli, match="this workspace holds no data yet: ingest a batch first")
    _batch(ws, outcome="")  # ingested, never validated
    _fails(ws, mlops_cli, match="no validated batch")


def test_failed_batch_is_not_trained_on(ws: Workspace, mlops_cli) -> None:  # type: ignore[no-untyped-def]
    batch_id = _batch(ws, outcome="failed")
    _fails(ws, mlops_cli, match=f"{batch_id} (failed)")


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("train.lr=-0.1", "train.lr"),
        ("train.epochs=0", "train.epochs"),
        ("train.nope=1", "train.nope"),
        ("train.lr", "section.key=value"),
    ],
)
def test_out_of_range_params(ws: Workspace, mlops_cli, override: str, match: str) -> None:  # type: ignore[no-untyped-def]
    _batch(ws)
    before = _fails(ws, mlops_cli, "--set", override, match=match)
    assert ws.params_path.read_text() == before  # a rejected value is never written


def test_cuda_requested_without_cuda(ws: Workspace, mlops_cli) -> None:  # type: ignore[no-untyped-def]
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _batch(ws)
    before = _fails(ws, mlops_cli, "--device", "cuda", match="no CUDA device")
    assert ws.params_path.read_text() == before


@pytest.mark.slow
def test_target_missing(ws: Workspace, mlops_cli) -> None:  # type: ignore[no-untyped-def]
    _batch(ws)
    store = Store.open(ws.database_url)
    spec = store.get_dataset_spec("ai4i")
    store.upsert_dataset("ai4i", "classification", {**spec, "target": "Failure label"})
    store.close()
    _fails(ws, mlops_cli, *FAST, match="missing column(s) 'Failure label'")
    runs = Store.open(ws.database_url)
    assert runs.get_run(1).status == "failed"
    runs.close()
