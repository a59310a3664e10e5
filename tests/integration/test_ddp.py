"""`train.nproc`: torch DDP (gloo on CPU) trains the single-process model, and the pipeline
registers it like any other."""

from __future__ import annotations

import csv
import json
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from mlops.params import PrepareParams, TrainParams
from mlops.settings import Workspace
from mlops.store import Store
from pipelines.ddp import launch
from pipelines.evaluate import evaluate_scores
from pipelines.ingest import ingest, load_source
from pipelines.model import load_predictor, save_model, verify_model
from pipelines.prepare import prepare, save_prepared
from pipelines.sources import AI4I_SPEC, DatasetSpec, generate_ai4i
from pipelines.train import train_model

pytestmark = pytest.mark.integration

TORQUE = replace(
    AI4I_SPEC, name="torque", task="regression", target="Torque [Nm]", positive_class=None,
    features=tuple(f for f in AI4I_SPEC.features if f != "Torque [Nm]"),
)  # fmt: skip
# 1500 rows give 965 train rows = 4 x 241 + 1: each epoch ends on a one-row batch, so rank 1's
# share of it is empty and must still take part in the gradient all-reduce.
ROWS, BATCH = 1500, 241
# No dropout: it is the one thing ranks draw differently (each its own masks), so without it
# two processes must reach the single process's weights up to float summation order.
PARAMS = TrainParams(hidden=[32, 32], batch_size=BATCH, dropout=0.0, device="cpu")
# Measured here: largest score difference 2.4e-7 (probabilities) and 6e-8 relative (torque in
# Nm). Averaging each rank's own batch mean instead (plain DDP, wrong under class weights and
# uneven shards) moved probabilities by 0.12. 1e-4 sits far from both.
TOL = 1e-4


def _curve(path: Path) -> list[dict[str, float]]:
    with path.open() as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("spec", "changes"),
    [
        # lr 0.03, patience 2: val loss turns up and rank 0's stop must end every rank's loop
        (AI4I_SPEC, {"lr": 0.03, "epochs": 10, "patience": 2}),
        (TORQUE, {"lr": 0.01, "epochs": 6, "patience": 10}),
    ],
    ids=["classification", "regression"],
)
def test_two_processes_train_the_single_process_model(
    tmp_path: Path, spec: DatasetSpec, changes: dict[str, float]
) -> None:
    data = prepare({"b": generate_ai4i(ROWS, seed=5)}, spec, PrepareParams())
    assert len(data.train) % BATCH == 1
    params = PARAMS.model_copy(update=changes)
    single = train_model(data, params, progress=False)
    save_model(
        tmp_path / "single",
        config=single.config,
        preprocessor=data.preprocessor,
        spec=data.spec,
        model=single.model,
    )

    save_prepared(data, tmp_path / "prepared")
    out = tmp_path / "ddp"
    info = launch(
        tmp_path / "prepared",
        params.model_copy(update={"nproc": 2}),
        model_dir=out / "model",
        curve_csv=out / "train_curve.csv",
        curve_png=out / "train_curve.png",
        info_path=out / "train_info.json",
        progress=False,
    )
    assert info["nproc"] == 2 and info["backend"] == "gloo" and info["device"] == "cpu"

    # the same epochs, losses and early-stopping decision (the CSV keeps 6 decimals)
    curve = _curve(out / "train_curve.csv")
    assert len(curve) == len(single.history) == info["epochs_run"]
    if spec is AI4I_SPEC:
        assert len(curve) < params.epochs, "early stopping never fired: pick a livelier lr"
    for ours, theirs in zip(curve, single.history, strict=True):
        assert ours["train_loss"] == pytest.approx(theirs["train_loss"], abs=TOL)
        assert ours["val_loss"] == pytest.approx(theirs["val_loss"], abs=TOL)
    assert info["best_epoch"] == single.best_epoch

    # the same kind of model folder, and the same predictions and metric on the test split
    verify_model(out / "model")
    assert (out / "train_curve.png").stat().st_size > 0
    ddp_scores = load_predictor(out / "model").scores(data.test)
    single_scores = load_predictor(tmp_path / "single").scores(data.test)
    np.testing.assert_allclose(ddp_scores, single_scores, rtol=TOL, atol=TOL)
    y = data.test[spec.target].to_numpy()
    classes = list(data.preprocessor.classes)
    metric = "pr_auc" if data.spec.task == "classification" else "rmse"
    ddp_m = evaluate_scores(data.spec.task, y, ddp_scores, classes, data.spec.positive_class)
    one_m = evaluate_scores(data.spec.task, y, single_scores, classes, data.spec.positive_class)
    assert ddp_m[metric] == pytest.approx(one_m[metric], rel=TOL)


# -- through `mlops train` and the DVC stage ----------------------------------------------------


def _validated_batch(ws: Workspace, rows: int = 1500) -> str:
    store = Store.open(ws.database_url)
    try:
        batch = ingest(ws, store, load_source(ws, "ai4i", rows=rows, seed=1)).batch
        store.add_validation(
            batch_id=batch.id, suite="test", success=True, policy="block", outcome="passed",
            evaluated=0, failures=[], docs_path=None,
        )  # fmt: skip
        return batch.id
    finally:
        store.close()


@pytest.mark.slow
def test_mlops_train_nproc_registers_a_model(ws: Workspace, mlops_cli) -> None:  # type: ignore[no-untyped-def]
    batch_id = _validated_batch(ws)
    fast = ["--set", "train.epochs=3", "--set", "train.hidden=[16]", "--device", "cpu"]
    res = mlops_cli("-w", ws.root, "train", "--nproc", "2", *fast, "--json")
    assert res.exit_code == 0, res.stderr
    record = json.loads(res.stdout)
    assert record["version"] == 1 and record["stage"] in ("staging", "rejected")
    assert record["batch_ids"] == [batch_id] and "pr_auc" in record["metrics"]
    assert record["lineage"]["params"]["train"]["nproc"] == 2
    assert record["lineage"]["device"] == "cpu"

    # --nproc went into params.yaml, which the train stage depends on: `dvc repro` reruns it
    assert yaml.safe_load(ws.params_path.read_text())["train"]["nproc"] == 2
    info = json.loads((ws.root / "artifacts" / "train_info.json").read_text())
    assert info["nproc"] == 2 and info["backend"] == "gloo" and info["epochs_run"] == 3
    # what the rest of the pipeline reads: a checked model folder that loads and predicts
    version = ws.version_dir(record["path"])
    verify_model(version / "model")
    frame = load_predictor(version / "model").predict(
        generate_ai4i(20, seed=9).drop(columns=[AI4I_SPEC.target])
    )
    assert len(frame) == 20
    assert mlops_cli("-w", ws.root, "models", "verify").exit_code == 0

    # back to one process is a change DVC sees: the train stage would run again
    ws.params_path.write_text(ws.params_path.read_text().replace("nproc: 2", "nproc: 1"))
    status = subprocess.run(
        ["dvc", "status", "train"], cwd=ws.root, capture_output=True, text=True, check=True
    ).stdout
    assert "train.nproc" in status, status


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_bad_nproc_is_one_line(ws: Workspace, mlops_cli, value: str) -> None:  # type: ignore[no-untyped-def]
    _validated_batch(ws, rows=200)
    before = ws.params_path.read_text()
    res = mlops_cli("-w", ws.root, "train", "--nproc", value)
    assert res.exit_code == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "train.nproc" in lines[0]
    assert ws.params_path.read_text() == before  # a rejected value is never written
