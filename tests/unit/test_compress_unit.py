"""Compression's pieces on tiny inline models: pruning, ONNX, int8, distillation, the choice."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from mlops.params import CompressParams
from pipelines import compress_methods as cm
from pipelines.compress import METRIC_EPS, choose, measure_latency
from pipelines.compress_report import VariantResult
from pipelines.model import MLP, ModelConfig, Preprocessor, load_predictor, save_model
from pipelines.sources import DatasetSpec

CONFIG = ModelConfig(task="classification", n_inputs=5, hidden=(12, 8), n_outputs=2)


def _model(config: ModelConfig = CONFIG, seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP(config).eval()


def _run_onnx(data: bytes, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["y"], {"x": x})[0])


def _layer(model: MLP, i: int) -> torch.nn.Linear:
    layer = model.net[i]
    assert isinstance(layer, torch.nn.Linear)
    return layer


X = np.random.default_rng(0).normal(size=(50, 5)).astype(np.float32)


def test_count_params_matches_torch() -> None:
    model = _model()
    assert cm.count_params(CONFIG) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("amount", "expected"), [(0.5, (6, 4)), (0.25, (9, 6)), (0.99, (1, 1))])
def test_pruning_really_shrinks_the_layers(amount: float, expected: tuple[int, ...]) -> None:
    small = cm.prune_structured(_model(), amount)
    assert small.config.hidden == expected
    assert _layer(small, 0).weight.shape == (expected[0], 5)
    assert small(torch.from_numpy(X)).shape == (50, 2)


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_pruning_removes_the_weakest_units(norm: str) -> None:
    # Units whose weights in and out are zero contribute nothing: they are the ones removed,
    # and the kept units' weights are copied unchanged.
    model = _model()
    dead = [0, 3, 5, 6, 7, 10]
    with torch.no_grad():
        _layer(model, 0).weight[dead] = 0.0
        _layer(model, 0).bias[dead] = 0.0
        _layer(model, 3).weight[:, dead] = 0.0
    small = cm.prune_structured(model, 0.5, norm)
    kept = [i for i in range(12) if i not in dead]
    assert small.config.hidden == (6, 4)
    assert torch.equal(_layer(small, 0).weight, _layer(model, 0).weight[kept])
    assert torch.equal(_layer(small, 0).bias, _layer(model, 0).bias[kept])


def test_pruning_dead_units_is_lossless() -> None:
    config = ModelConfig(task="regression", n_inputs=5, hidden=(8,), n_outputs=1)
    model = _model(config)
    with torch.no_grad():
        _layer(model, 0).weight[4:] = 0.0
        _layer(model, 0).bias[4:] = 0.0
        _layer(model, 3).weight[:, 4:] = 0.0
    small = cm.prune_structured(model, 0.5)
    x = torch.from_numpy(X)
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x))


def test_onnx_export_and_compaction_keep_the_outputs() -> None:
    model = _model()
    raw = cm.export_onnx(model, 5)
    compact = cm.compact_onnx(raw)
    assert len(compact) < len(raw)
    with torch.no_grad():
        expected = model(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(_run_onnx(raw, X), expected, atol=1e-5)
    np.testing.assert_array_equal(_run_onnx(compact, X), _run_onnx(raw, X))
    # any batch size: the batch axis is dynamic
    assert _run_onnx(compact, X[:1]).shape == (1, 2)


def test_onnx_int8_is_smaller_and_close() -> None:
    model = _model(replace(CONFIG, hidden=(64, 64)))
    raw = cm.export_onnx(model, 5)
    int8 = cm.compact_onnx(cm.quantize_onnx_int8(raw))
    assert len(int8) < len(cm.compact_onnx(raw)) / 2
    np.testing.assert_allclose(_run_onnx(int8, X), _run_onnx(raw, X), atol=0.05)


def test_quantization_does_not_install_a_root_log_handler() -> None:
    import logging

    root = logging.getLogger()
    before = list(root.handlers)
    cm.quantize_onnx_int8(cm.export_onnx(_model(), 5))
    assert root.handlers == before


def _pre_spec() -> tuple[Preprocessor, DatasetSpec]:
    names = tuple(f"f{i}" for i in range(5))
    spec = DatasetSpec("toy", "classification", "y", names, (), (), ())
    pre = Preprocessor("classification", "y", names, (0.0,) * 5, (1.0,) * 5, {}, [0, 1])
    return pre, spec


def test_torch_int8_round_trips_through_save_and_load_predictor(tmp_path: Path) -> None:
    pre, spec = _pre_spec()
    q = cm.quantize_dynamic_int8(_model())
    save_model(tmp_path / "m", config=CONFIG, preprocessor=pre, spec=spec, model=q,
               extra={"quantization": "dynamic_int8"})  # fmt: skip
    predictor = load_predictor(tmp_path / "m")
    assert predictor.runtime == "torch"
    with torch.no_grad():
        expected = q(torch.from_numpy(X)).numpy()
    np.testing.assert_array_equal(predictor.raw(X), expected)


def test_distilled_student_learns_the_teacher() -> None:
    teacher = _model(replace(CONFIG, hidden=(32,)), seed=1)
    x = np.random.default_rng(1).normal(size=(2000, 5)).astype(np.float32)
    with torch.no_grad():
        y = teacher(torch.from_numpy(x)).argmax(1).numpy()
    data = cm.DistillData(x[:1500], y[:1500], x[1500:], y[1500:])
    student = MLP(replace(CONFIG, hidden=(16,)))
    student = cm.distill(student, teacher, data, epochs=15, temperature=2.0, alpha=0.9,
                         lr=0.01, batch_size=128, seed=0)  # fmt: skip
    with torch.no_grad():
        agree = (student(torch.from_numpy(x[1500:])).argmax(1).numpy() == y[1500:]).mean()
    assert agree > 0.9


def test_latency_is_measured_for_every_engine() -> None:
    lat = measure_latency({"a": lambda x: x * 2, "b": lambda x: x.sum()}, X, repeats=20)
    assert set(lat) == {"a", "b"}
    assert all(v > 0 for v in lat.values())


# -- the choice ------------------------------------------------------------------------------


def _row(
    name: str, *, size: int, lat: float, drop: float | None, agree: float = 1.0
) -> VariantResult:
    primary = None if drop is None else 0.8 - drop
    return VariantResult(
        name=name, runtime="onnx", method={}, path="", hidden=[8], params=10, size_bytes=size,
        latency_b1_us=lat, latency_b64_us=lat, throughput_b64=64e6 / lat, metrics={},
        primary=primary, drop=drop, agreement=agree, cost=(lat / 100) * (size / 1000),
    )  # fmt: skip


PARENT = _row("parent", size=1000, lat=100, drop=0.0)


def test_choose_takes_the_lowest_cost_within_tolerance() -> None:
    rows = [PARENT, _row("fast", size=900, lat=20, drop=0.001),
            _row("small", size=200, lat=60, drop=0.0),  # cost 0.12 vs fast 0.18
            _row("tiny-but-bad", size=50, lat=10, drop=0.02)]  # fmt: skip
    out, chosen = choose(rows, "classification", "pr_auc", CompressParams())
    assert chosen == "small"
    status = {r.name: r.status for r in out}
    assert status == {"parent": "parent", "fast": "passed", "small": "chosen",
                      "tiny-but-bad": "rejected"}  # fmt: skip
    assert "drop" in next(r.reason for r in out if r.name == "tiny-but-bad")


@pytest.mark.parametrize(
    ("row", "why"),
    [
        (_row("over", size=100, lat=10, drop=0.005 + 1e-6), "drop"),
        (_row("disagrees", size=100, lat=10, drop=0.0, agree=0.985), "agreement"),
        (_row("slower", size=900, lat=150, drop=0.0), "cost"),
        (_row("undefined", size=100, lat=10, drop=None), "undefined"),
    ],
)
def test_choose_never_takes_a_variant_that_fails_a_rule(row: VariantResult, why: str) -> None:
    out, chosen = choose([PARENT, row], "classification", "pr_auc", CompressParams())
    assert chosen is None
    assert out[1].status == "rejected"
    assert why in out[1].reason


def test_choose_at_zero_tolerance_takes_only_lossless() -> None:
    params = CompressParams(max_quality_drop=0.0)
    rows = [PARENT, _row("lossless", size=900, lat=50, drop=0.0),
            _row("tiny-loss", size=100, lat=10, drop=1e-4)]  # fmt: skip
    out, chosen = choose(rows, "classification", "pr_auc", params)
    assert chosen == "lossless"
    assert all(r.drop is not None and r.drop <= METRIC_EPS for r in out if r.status == "chosen")


def test_regression_is_gated_on_agreement_and_a_relative_tolerance() -> None:
    # A variant that agrees with its parent on half the rows is not the same model, however
    # close its RMSE: regression has an agreement rule too.
    rows = [PARENT, _row("far", size=100, lat=10, drop=0.0, agree=0.5)]
    out, chosen = choose(rows, "regression", "rmse", CompressParams())
    assert chosen is None and "agreement 50.00% < 95%" in out[1].reason
    # The tolerance is a share of the parent's RMSE, not points of a classification metric.
    allowed = CompressParams().regression_relative_drop * PARENT.primary  # type: ignore[operator]
    rows = [
        PARENT,
        _row("inside", size=100, lat=10, drop=allowed * 0.9, agree=0.99),
        _row("outside", size=50, lat=5, drop=allowed * 1.1, agree=0.99),
    ]
    out, chosen = choose(rows, "regression", "rmse", CompressParams())
    assert chosen == "inside" and "drop" in out[2].reason
