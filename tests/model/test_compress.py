"""Compression of the ai4i model: every method yields a measured variant; the choice is safe."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlops.params import CompressParams, EvaluateParams
from mlops.settings import Workspace
from mlops.store import Store
from pipelines import compress as compress_mod
from pipelines.compress import METRIC_EPS, compress_model
from pipelines.compress_report import CompressionReport
from pipelines.evaluate import evaluate_predictor
from pipelines.model import load_predictor, read_manifest
from pipelines.prepare import load_prepared

# Few latency calls and short training: the numbers are real, only less precise.
FAST = CompressParams(latency_repeats=20, distill_epochs=8, finetune_epochs=2)
VARIANTS = {
    "parent", "onnx-fp32", "onnx-int8", "torch-int8", "pruned", "pruned-onnx-fp32",
    "pruned-onnx-int8", "student", "student-onnx-fp32", "student-onnx-int8",
}  # fmt: skip


@pytest.fixture(scope="module")
def report(trained: Any, tmp_path_factory: pytest.TempPathFactory) -> CompressionReport:
    out = tmp_path_factory.mktemp("compress")
    return compress_model(trained.predictor.path, trained.data, FAST, EvaluateParams(), out)


def test_every_method_yields_a_measured_variant(report: CompressionReport) -> None:
    assert {v.name for v in report.variants} == VARIANTS
    assert report.parent.name == "parent" and report.parent.runtime == "torch"
    for v in report.variants:
        weights = Path(v.path) / read_manifest(Path(v.path))["weights"]
        assert v.size_bytes == weights.stat().st_size
        assert v.latency_b1_us > 0 and v.latency_b64_us > 0
        assert v.throughput_b64 == pytest.approx(64e6 / v.latency_b64_us)
        assert v.primary is not None and 0 <= v.agreement <= 1
        assert v.status in ("parent", "chosen", "passed", "rejected") and v.reason
    by = {v.name: v for v in report.variants}
    # structured pruning removed half of each hidden layer; the student has its own width
    assert by["pruned"].hidden == [h // 2 for h in by["parent"].hidden]
    assert by["pruned"].params < by["parent"].params
    assert by["student"].hidden == FAST.student_hidden
    assert by["onnx-int8"].size_bytes < by["onnx-fp32"].size_bytes / 2
    assert by["onnx-int8"].size_bytes < by["parent"].size_bytes / 3
    assert by["onnx-fp32"].drop == pytest.approx(0.0, abs=1e-6)  # the same function


def test_table_csv_and_plot_are_written(report: CompressionReport) -> None:
    with report.csv_path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["variant"] for r in rows] == [v.name for v in report.variants]
    assert {"size_bytes", "params", "latency_b1_us", "latency_b64_us", "throughput_b64_rows_s",
            report.primary_metric, "drop", "agreement", "status"} <= rows[0].keys()  # fmt: skip
    assert report.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((report.out_dir / "compression.json").read_text())
    assert saved["chosen"] == report.chosen


def test_chosen_variant_agrees_with_its_parent(trained: Any, report: CompressionReport) -> None:
    best = report.chosen_result
    assert best is not None, [(v.name, v.reason) for v in report.variants]
    assert best.drop is not None and best.drop <= FAST.max_quality_drop + METRIC_EPS
    test = trained.data.test
    chosen = load_predictor(Path(best.path))
    same = chosen.predict(test) == trained.predictor.predict(test)
    assert same.mean() >= 0.99


def test_every_variant_loads_and_scores_as_measured(
    trained: Any, report: CompressionReport
) -> None:
    for v in report.variants:
        predictor = load_predictor(Path(v.path))
        assert predictor.runtime == v.runtime
        metrics = evaluate_predictor(predictor, trained.data.test)
        assert metrics[report.primary_metric] == pytest.approx(v.primary, abs=1e-6), v.name


def test_a_variant_beyond_the_tolerance_is_never_chosen(trained: Any, tmp_path: Path) -> None:
    # 95 % of the units gone and no fine-tune: far worse; at tolerance 0 only lossless may win.
    params = FAST.model_copy(
        update={"prune_amount": 0.95, "finetune_epochs": 0, "max_quality_drop": 0.0}
    )
    report = compress_model(
        trained.predictor.path, trained.data, params, EvaluateParams(), tmp_path
    )
    by = {v.name: v for v in report.variants}
    for name in ("pruned", "pruned-onnx-fp32", "pruned-onnx-int8"):
        drop = by[name].drop
        assert drop is not None and drop > 0.0
        assert by[name].status == "rejected" and "drop" in by[name].reason
    for v in report.variants:
        if v.status in ("chosen", "passed"):
            assert v.drop is not None and v.drop <= METRIC_EPS, v.name
    best = report.chosen_result
    assert best is not None and best.drop is not None and best.drop <= METRIC_EPS


# -- the command, on a workspace with a model the real pipeline registered --------------------


def _registered_parent(ws: Workspace, store: Store) -> str:
    from pipelines.ingest import ingest, load_source
    from pipelines.registry import train_and_register

    batch = ingest(ws, store, load_source(ws, "ai4i", rows=3000, seed=3)).batch
    store.add_validation(
        batch_id=batch.id, suite="test", success=True, policy="block", outcome="passed",
        evaluated=0, failures=[], docs_path=None,
    )  # fmt: skip
    record = train_and_register(ws, store, ["train.epochs=6", "train.device=cpu"])
    return record.ref


@pytest.mark.slow
@pytest.mark.integration
def test_mlops_compress_registers_the_chosen_variant_as_a_child(
    ws: Workspace, mlops_cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store.open(ws.database_url)
    try:
        ref = _registered_parent(ws, store)
        parent = store.get_model(ref)
        fast = ["--set", "compress.latency_repeats=20", "--set", "compress.distill_epochs=5"]

        result = mlops_cli("-w", ws.root, "compress", ref, *fast)
        assert result.exit_code == 0, result.stderr
        child = store.list_models(name=parent.name)[-1]
        assert f"registered {child.ref}" in " ".join(result.stdout.split())
        assert child.parent_id == parent.id and child.ref != parent.ref
        assert child.method["kind"] == "compress" and child.method["variant"]
        assert child.lineage["parent"] == parent.ref
        # the child met the gate like any candidate: no production, so against its parent,
        # within the compression tolerance (non-inferiority)
        gate = child.decision
        assert (gate["against"], gate["against_ref"]) == ("parent", parent.ref), gate
        assert gate["margin"] == -0.005 and len(gate["interval"]) == 2
        assert child.stage == ("staging" if gate["passed"] else "rejected")
        assert [e.action for e in store.stage_history(child.ref)] == ["register", "gate"]
        assert store.get_model(ref).stage == parent.stage  # the parent is left alone
        table = child.lineage["compression"]["table"]
        assert {r["variant"] for r in table} == VARIANTS
        assert [r["variant"] for r in table if r["status"] == "chosen"] == [child.method["variant"]]
        assert child.metrics["quality_drop"] <= 0.005 + METRIC_EPS

        child_dir, parent_dir = ws.version_dir(child.path), ws.version_dir(parent.path)
        assert (child_dir / "prepared" / "test.parquet").is_file()
        reports = ws.home / child.lineage["compression_report"]
        assert (reports / "compression.csv").is_file() and (reports / "compression.png").is_file()
        # the runtime is part of the version, and load_predictor serves it
        predictor = load_predictor(child_dir / "model")
        assert predictor.runtime == child.runtime
        test = load_prepared(child_dir / "prepared").test
        same = predictor.predict(test) == load_predictor(parent_dir / "model").predict(test)
        assert float(np.mean(same)) >= 0.99

        # The same parent with the same compress params: the child is reused, not re-registered
        versions = len(store.list_models())
        again = mlops_cli("-w", ws.root, "compress", ref, *fast, "--json")
        assert again.exit_code == 0, again.stderr
        out = json.loads(again.stdout)
        assert out["reused"] is True and out["registered"]["id"] == child.id
        assert len(store.list_models()) == versions

        # When no variant passes, nothing is registered and the command fails with the numbers.
        def reject_all(results, task, metric, params):  # type: ignore[no-untyped-def]
            rows = [r if i == 0 else replace(r, status="rejected", reason="test")
                    for i, r in enumerate(results)]  # fmt: skip
            return rows, None

        monkeypatch.setattr(compress_mod, "choose", reject_all)
        before = len(store.list_models())
        failed = mlops_cli("-w", ws.root, "compress", ref, "--json", *fast,
                           "--set", "compress.finetune_epochs=2")  # fmt: skip
        assert failed.exit_code == 3
        assert "nothing registered" in failed.stderr
        assert json.loads(failed.stdout)["registered"] is None
        assert len(store.list_models()) == before
    finally:
        store.close()


def test_a_regression_model_compresses_too(tmp_path: Path) -> None:
    # Regression takes the other paths: MSE to the teacher, rmse (lower is better), agreement
    # within a share of the target's spread.
    from mlops.params import PrepareParams, TrainParams
    from pipelines.model import save_model
    from pipelines.prepare import prepare
    from pipelines.sources import AI4I_SPEC, DatasetSpec, generate_ai4i
    from pipelines.train import train_model

    features = tuple(c for c in AI4I_SPEC.features if c != "Torque [Nm]")
    spec = DatasetSpec("torque", "regression", "Torque [Nm]", features, ("Type",), (), ())
    frame = generate_ai4i(3000, 11)[[*features, "Torque [Nm]"]]
    data = prepare({"b": frame}, spec, PrepareParams())
    result = train_model(data, TrainParams(hidden=[32, 32], epochs=5, device="cpu"), progress=False)
    parent = save_model(tmp_path / "parent", config=result.config, preprocessor=data.preprocessor,
                        spec=spec, model=result.model)  # fmt: skip
    # max_quality_drop (points of a classification metric) must not apply to RMSE in Nm
    params = FAST.model_copy(update={"max_quality_drop": 100.0})
    report = compress_model(parent, data, params, EvaluateParams(), tmp_path / "out")
    assert report.primary_metric == "rmse" and not report.higher_is_better
    by = {v.name: v for v in report.variants}
    assert set(by) == VARIANTS
    for v in report.variants[1:]:
        assert v.drop == pytest.approx(v.primary - report.parent.primary)  # type: ignore[operator]
    assert by["onnx-fp32"].agreement == 1.0
    # the tolerance is a share of the parent's RMSE, and agreement is a rule for regression too
    allowed = params.regression_relative_drop * report.parent.primary  # type: ignore[operator]
    for v in report.variants[1:]:
        too_far = v.drop is not None and v.drop > allowed + METRIC_EPS
        disagrees = v.agreement < params.regression_min_agreement
        assert (v.status == "rejected") == (too_far or disagrees or v.cost >= 1.0), v
        if disagrees:
            assert "agreement" in v.reason
    best = report.chosen_result
    assert best is None or (best.drop is not None and best.drop <= allowed + METRIC_EPS)
