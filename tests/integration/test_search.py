"""`train.search` and the linear model (`train.hidden: []`), end to end through `mlops train`.

The search scores every candidate on the validation split; the winner's values go into
params.yaml, so `dvc repro` trains exactly the winner and dvc.lock records it. A linear model is
the same network without hidden layers: it registers, compresses (ONNX, int8) and serves.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from mlops.params import CompressParams, EvaluateParams, load_params
from mlops.settings import Workspace
from mlops.store import Store
from pipelines.artifact import model_folder
from pipelines.evaluate import evaluate_predictor
from pipelines.ingest import ingest, load_source
from pipelines.model import load_predictor
from pipelines.prepare import load_prepared

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# A crippled candidate (one epoch at a learning rate that barely moves the weights) beside two
# trained ones: the search must not pick it, and must pick the best of the others on val.
SEARCH = (
    "train.search=[{epochs: 1, lr: 0.00001}, {hidden: [16], epochs: 20, lr: 0.01}, "
    "{hidden: [], epochs: 20, lr: 0.01}]"
)


def _batch(ws: Workspace, rows: int = 1500, seed: int = 1) -> str:
    with Store.open(ws.database_url) as store:
        batch = ingest(ws, store, load_source(ws, "ai4i", rows=rows, seed=seed)).batch
        store.add_validation(
            batch_id=batch.id,
            suite="test",
            success=True,
            policy="block",
            outcome="passed",
            evaluated=0,
            failures=[],
            docs_path=None,
        )
        return batch.id


def _val_metric(ws: Workspace, record: dict[str, Any], metric: str) -> float:
    """The registered model's primary metric on its own prepared val split."""
    folder = ws.version_dir(record["path"])
    predictor = load_predictor(model_folder(folder))
    value = evaluate_predictor(predictor, load_prepared(folder / "prepared").val)[metric]
    return float(value)


def test_search_chooses_the_best_on_val_and_dvc_records_the_winner(
    ws: Workspace, mlops_cli: Any
) -> None:
    _batch(ws, rows=3000)
    res = mlops_cli("-w", ws.root, "train", "--set", SEARCH, "--json")
    assert res.exit_code == 0, res.stderr
    record = json.loads(res.stdout)
    search = record["lineage"]["search"]
    metric = search["metric"]
    assert metric == "pr_auc" and search["split"] == "val" and not search["cached"]
    values = [s["value"] for s in search["scores"]]
    assert len(values) == 3 and all(v is not None for v in values)
    assert search["winner"] == int(np.argmax(values)) != 0  # the crippled one loses
    assert values[0] < max(values) - 0.2, values  # ... clearly
    # Every candidate holds every key any candidate sets (a repeat run searches the same).
    assert [sorted(c) for c in search["candidates"]] == [["epochs", "hidden", "lr"]] * 3
    winner = search["candidates"][search["winner"]]

    # params.yaml and dvc.lock hold the winner: `dvc repro` alone rebuilds this model.
    train = load_params(ws.params_path).train.model_dump(mode="json")
    assert {k: train[k] for k in winner} == winner
    assert [train["search"][i][k] for i, k in [(0, "epochs"), (1, "hidden"), (2, "hidden")]] == [
        1,
        [16],
        [],
    ]
    locked = yaml.safe_load((ws.root / "dvc.lock").read_text())["stages"]["train"]["params"]
    assert {k: locked["params.yaml"][f"train.{k}"] for k in winner} == winner
    status = subprocess.run(["dvc", "status"], cwd=ws.root, capture_output=True, text=True)
    assert "up to date" in status.stdout, status.stdout
    # The DVC stage trained the same weights the search scored.
    assert _val_metric(ws, record, metric) == pytest.approx(values[search["winner"]], abs=1e-9)
    assert record["lineage"]["params"]["train"]["hidden"] == winner["hidden"]
    assert record["method"]["hidden"] == winner["hidden"]

    # Again, nothing new: the search is answered from its record, DVC runs nothing.
    again = mlops_cli("-w", ws.root, "train", "--json")
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["version"] == record["version"]
    # ... and carries this run's search, for the table `mlops train` prints
    assert json.loads(again.stdout)["lineage"]["search"]["winner"] == search["winner"]
    shown = mlops_cli("-w", ws.root, "models", "show", f"ai4i:{record['version']}")
    assert "search: 3 candidates on the val split" in shown.stdout
    assert len(list((ws.home / "search").glob("*.json"))) == 1


def test_a_linear_model_trains_registers_compresses_and_serves(
    ws: Workspace, mlops_cli: Any, tmp_path: Path
) -> None:
    from pipelines.compress import compress_model
    from serving.host import ModelHost
    from serving.schema import input_schema

    _batch(ws, rows=2000)
    res = mlops_cli("-w", ws.root, "train", "--set", "train.hidden=[]", "--set",
                    "train.epochs=10", "--json")  # fmt: skip
    assert res.exit_code == 0, res.stderr
    record = json.loads(res.stdout)
    assert record["method"] == {"kind": "train", "model": "linear", "hidden": []}
    folder = model_folder(ws.version_dir(record["path"]))
    assert json.loads((folder / "config.json").read_text())["hidden"] == []
    predictor = load_predictor(folder)
    prepared = load_prepared(ws.version_dir(record["path"]) / "prepared")
    # logistic regression: it ranks failures far better than the class prior does
    assert record["metrics"]["pr_auc"] > 2 * record["metrics"]["trivial"]["pr_auc"]

    # Compress: no hidden units to prune and no smaller student; ONNX and int8 still apply.
    report = compress_model(folder, prepared, CompressParams(latency_repeats=20),
                            EvaluateParams(), tmp_path / "compress")  # fmt: skip
    assert {v.name for v in report.variants} == {"parent", "onnx-fp32", "onnx-int8", "torch-int8"}
    assert set(report.skipped) == {"pruned", "student"}
    by = {v.name: v for v in report.variants}
    assert by["onnx-fp32"].drop == pytest.approx(0.0, abs=1e-6)
    assert by["onnx-fp32"].agreement == 1.0 and by["parent"].hidden == []

    # Serving's loader takes it: checksums, schema, smoke check, then an answer per record.
    with Store.open(ws.database_url) as store:
        store.set_stage(record["id"], "production", action="override", reason="test")
        host = ModelHost(store, "ai4i", input_schema(predictor.manifest["schema"]),
                         resolve_path=lambda m: model_folder(ws.version_dir(m.path)))  # fmt: skip
        swap = host.refresh()
        assert swap is not None and swap.loaded == [f"ai4i:{record['version']}"], swap
        assert host.routes.production is not None
        served = host.routes.production.predictor.scores(prepared.test.head(5))
    assert served.shape == (5, 2) and np.allclose(served.sum(axis=1), 1.0, atol=1e-5)
