"""Compress: build smaller and faster variants of a trained model, measure them all in one run,
and choose one only if its quality stays within the tolerance.

Variants of a torch fp32 parent (methods in `pipelines/compress_methods.py`):
    onnx-fp32, onnx-int8        ONNX export run by ONNX Runtime; int8 = dynamic quantization
    torch-int8                  torch.ao dynamic int8, for comparison
    pruned[-onnx-fp32|-int8]    structured pruning of whole hidden units, fine-tuned
    student[-onnx-fp32|-int8]   a smaller MLP distilled from the parent

A linear parent (no hidden layer) gets no pruned variants (no hidden units to remove), and no
parent gets a student that is not smaller than itself (`skipped_methods`): the report names them.

Every variant, and the parent as the reference, is measured on the same inputs with one CPU
thread per runtime: file size, parameter count, latency at batch 1 and 64, throughput, the
metrics on the parent's test split, the primary metric's drop and prediction agreement.

The choice rule: a variant passes when its primary-metric drop is within the task's tolerance
(classification: `max_quality_drop` points; regression: `regression_relative_drop` of the
parent's value; plus float noise, `METRIC_EPS`), it agrees with the parent on enough test rows
(classification: the same class on `min_agreement`; regression: within `regression_agreement`
target standard deviations on `regression_min_agreement`), and it is smaller x faster than the
parent (cost < 1). Among those that pass, the lowest cost wins, where
    cost = (latency at batch 64 / parent's) x (file size / parent's)
so halving either counts the same; ties go to the faster, then the smaller one. No variant
beyond the tolerance is ever chosen: with none passing there is no choice.
"""

from __future__ import annotations

import copy
import math
import shutil
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from mlops.errors import MlopsError
from mlops.io import atomic_write_json, atomic_write_text
from mlops.params import CompressParams, EvaluateParams
from mlops.settings import Workspace
from mlops.store import ModelRecord, Store
from pipelines import compress_methods as cm
from pipelines.artifact import model_folder
from pipelines.compress_report import RULE, CompressionReport, VariantResult, plot_tradeoff
from pipelines.evaluate import evaluate_predictor, evaluate_scores, primary_metric
from pipelines.gate import gate
from pipelines.model import (
    MLP,
    ModelConfig,
    Predictor,
    Preprocessor,
    load_predictor,
    load_torch_model,
    read_manifest,
    save_model,
)
from pipelines.prepare import PreparedData, load_prepared

METRIC_EPS = 1e-9  # float noise: a drop this small is no drop
Progress = Callable[[str], None]


class NoVariantPassed(MlopsError):
    """Every variant lost too much quality (or speed): nothing is registered."""

    exit_code = 3


@dataclass
class _Built:
    name: str
    method: dict[str, Any]
    config: ModelConfig
    model: nn.Module | None = None
    onnx_bytes: bytes | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# -- building -------------------------------------------------------------------------------


def _distill_data(prepared: PreparedData, pre: Preprocessor, weighted: bool) -> cm.DistillData:
    from pipelines.train import class_weights

    x_tr, x_va = pre.transform(prepared.train), pre.transform(prepared.val)
    y_tr = pre.encode_target(prepared.train[pre.target])
    y_va = pre.encode_target(prepared.val[pre.target])
    cw = None
    if pre.task == "classification" and weighted:
        # The label term weighs classes as the trainer did, so the student's decision
        # threshold sits where the teacher's does.
        cw = class_weights(torch.from_numpy(y_tr), len(pre.classes)).numpy()
    return cm.DistillData(x_tr, y_tr, x_va, y_va, cw)


def _onnx_forms(
    name: str, model: nn.Module, config: ModelConfig, method: dict[str, Any]
) -> list[_Built]:
    raw = cm.export_onnx(model, config.n_inputs)
    base = method["method"]
    return [
        _Built(f"{name}onnx-fp32", {**method, "method": f"{base}onnx-fp32"}, config,
               onnx_bytes=cm.compact_onnx(raw)),
        _Built(f"{name}onnx-int8", {**method, "method": f"{base}onnx-int8",
               "quantization": "onnxruntime dynamic int8"}, config,
               onnx_bytes=cm.compact_onnx(cm.quantize_onnx_int8(raw))),
    ]  # fmt: skip


def skipped_methods(config: ModelConfig, params: CompressParams) -> dict[str, str]:
    """Methods that make no sense for this parent, and why: a linear model (no hidden layer)
    has no hidden units to prune, and a student no smaller than its teacher saves nothing."""
    skipped = {}
    if not config.hidden:
        skipped["pruned"] = "no hidden layer: nothing to prune"
    student = replace(config, hidden=tuple(params.student_hidden))
    if cm.count_params(student) >= cm.count_params(config):
        skipped["student"] = (
            f"a {list(params.student_hidden)} student has {cm.count_params(student)} "
            f"parameters, the parent {cm.count_params(config)}: nothing to distill into"
        )
    return skipped


def build_variants(
    teacher: MLP, data: cm.DistillData, params: CompressParams, progress: Progress
) -> list[_Built]:
    """Every variant of `teacher`: quantized, pruned, distilled, and their ONNX forms (less
    the methods `skipped_methods` rules out for it)."""
    config = teacher.config
    skipped = skipped_methods(config, params)

    def tune(model: MLP, epochs: int, lr: float) -> MLP:
        return cm.distill(
            model, teacher, data, epochs=epochs, lr=lr, temperature=params.distill_temperature,
            alpha=params.distill_alpha, batch_size=params.batch_size, seed=params.seed,
        )  # fmt: skip

    progress("exporting to ONNX, quantizing")
    out = _onnx_forms("", teacher, config, {"method": ""})
    out.append(_Built("torch-int8", {"method": "torch-int8", "quantization": "torch.ao dynamic "
                      "int8"}, config, model=cm.quantize_dynamic_int8(copy.deepcopy(teacher)),
                      extra={"quantization": "dynamic_int8"}))  # fmt: skip

    if "pruned" not in skipped:
        progress(f"pruning {params.prune_amount:.0%} of the hidden units, fine-tuning")
        pruned = cm.prune_structured(teacher, params.prune_amount, params.prune_norm)
        if params.finetune_epochs > 0:
            pruned = tune(pruned, params.finetune_epochs, params.finetune_lr)
        method = {
            "method": "prune", "prune_amount": params.prune_amount,
            "prune_norm": params.prune_norm, "finetune_epochs": params.finetune_epochs,
            "hidden": list(pruned.config.hidden),
        }  # fmt: skip
        out.append(_Built("pruned", method, pruned.config, model=pruned))
        out += _onnx_forms("pruned-", pruned, pruned.config, {**method, "method": "prune+"})

    if "student" in skipped:
        return out
    progress(f"distilling a {params.student_hidden} student")
    student_config = replace(config, hidden=tuple(params.student_hidden), dropout=0.0)
    student = tune(MLP(student_config), params.distill_epochs, params.distill_lr)
    method = {
        "method": "distill", "hidden": list(params.student_hidden),
        "temperature": params.distill_temperature, "alpha": params.distill_alpha,
        "epochs": params.distill_epochs,
    }  # fmt: skip
    out.append(_Built("student", method, student_config, model=student))
    out += _onnx_forms("student-", student, student_config, {**method, "method": "distill+"})
    return out


# -- measuring ------------------------------------------------------------------------------


@contextmanager
def single_thread() -> Iterator[None]:
    """One intra-op thread for torch (ONNX Runtime sessions get theirs at creation)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def measure_latency(
    engines: Mapping[str, Callable[[np.ndarray], Any]], x: np.ndarray, repeats: int, rounds: int = 5
) -> dict[str, float]:
    """Median microseconds per call of each engine on `x`, after a warm-up.

    Calls are interleaved in rounds, so load from elsewhere on the machine falls on all alike.
    """
    for engine in engines.values():
        for _ in range(max(10, repeats // 10)):
            engine(x)
    times: dict[str, list[int]] = {name: [] for name in engines}
    per_round = max(1, math.ceil(repeats / rounds))
    for _ in range(rounds):
        for name, engine in engines.items():
            for _ in range(per_round):
                t0 = time.perf_counter_ns()
                engine(x)
                times[name].append(time.perf_counter_ns() - t0)
    return {name: statistics.median(t) / 1e3 for name, t in times.items()}


def _predictions(p: Predictor, scores: np.ndarray) -> np.ndarray:
    return scores.argmax(axis=1) if p.config.task == "classification" else scores


def _scalar_metrics(m: dict[str, Any]) -> dict[str, Any]:
    skip = {"n", "positive_class"}
    return {k: v for k, v in m.items() if k not in skip and (v is None or isinstance(v, float))}


def _weights_file(path: Path) -> Path:
    return path / str(read_manifest(path)["weights"])


def measure(
    paths: Mapping[str, Path],
    methods: Mapping[str, dict[str, Any]],
    test: pd.DataFrame,
    params: CompressParams,
    metric: str,
    higher: bool,
) -> list[VariantResult]:
    """Measure saved models on the same test rows (the first is the reference)."""
    with single_thread():
        predictors = {n: load_predictor(p, threads=1) for n, p in paths.items()}
        ref = next(iter(predictors.values()))
        x = ref.preprocessor.transform(test)
        x64 = np.ascontiguousarray(np.resize(x, (64, x.shape[1])))  # repeats rows if < 64
        x1 = np.ascontiguousarray(x[:1])
        engines = {n: p.raw for n, p in predictors.items()}
        lat64 = measure_latency(engines, x64, params.latency_repeats)
        lat1 = measure_latency(engines, x1, params.latency_repeats)
        y_true = test[ref.spec.target].to_numpy()
        scores = {n: p.scores(test) for n, p in predictors.items()}
    ref_pred = _predictions(ref, scores[next(iter(scores))])
    tol = params.regression_agreement * ref.preprocessor.target_std
    results: list[VariantResult] = []
    for name, p in predictors.items():
        metrics = _scalar_metrics(evaluate_scores(p.config.task, y_true, scores[name],
                                                  p.preprocessor.classes,
                                                  p.spec.positive_class))  # fmt: skip
        pred = _predictions(p, scores[name])
        same = pred == ref_pred if p.config.task == "classification" else (
            np.abs(pred - ref_pred) <= tol)  # fmt: skip
        value = metrics.get(metric)
        base = results[0].primary if results else value
        drop = None if value is None or base is None else (base - value if higher else value - base)
        size = _weights_file(paths[name]).stat().st_size
        ref_size = results[0].size_bytes if results else size
        ref_lat = results[0].latency_b64_us if results else lat64[name]
        results.append(VariantResult(
            name=name, runtime=p.runtime, method=dict(methods[name]), path=str(paths[name]),
            hidden=list(p.config.hidden), params=cm.count_params(p.config), size_bytes=size,
            latency_b1_us=lat1[name], latency_b64_us=lat64[name],
            throughput_b64=64 / (lat64[name] / 1e6), metrics=metrics, primary=value, drop=drop,
            agreement=float(np.mean(same)), cost=lat64[name] / ref_lat * size / ref_size,
        ))  # fmt: skip
    return results


# -- choosing -------------------------------------------------------------------------------


def quality_tolerance(params: CompressParams, task: str, parent_value: float | None) -> float:
    """How much of the primary metric a variant may lose: points of the metric for
    classification; a fraction of the parent's value for regression (RMSE has the target's
    unit, so an absolute tolerance means nothing across data sets)."""
    if task == "classification":
        return params.max_quality_drop
    return params.regression_relative_drop * abs(parent_value or 0.0)


def choose(
    results: list[VariantResult], task: str, metric: str, params: CompressParams
) -> tuple[list[VariantResult], str | None]:
    """Mark each variant passed or rejected (with why) and pick the winner; see the module doc."""
    parent, out = results[0], [replace(results[0], status="parent", reason="reference")]
    passed: list[VariantResult] = []
    allowed = quality_tolerance(params, task, parent.primary)
    min_agreement = (
        params.min_agreement if task == "classification" else params.regression_min_agreement
    )
    for r in results[1:]:
        why = []
        if r.drop is None or parent.primary is None:
            why.append(f"{metric} undefined on the test split")
        elif r.drop > allowed + METRIC_EPS:
            why.append(f"{metric} drop {r.drop:.4f} > {allowed:.4f}")
        if r.agreement < min_agreement:
            why.append(f"agreement {r.agreement:.2%} < {min_agreement:.0%}")
        if r.cost >= 1.0:
            why.append(f"cost {r.cost:.2f} >= 1: not smaller x faster than the parent")
        r = replace(r, status="rejected" if why else "passed", reason="; ".join(why))
        out.append(r)
        if not why:
            passed.append(r)
    if not passed:
        return out, None
    best = min(passed, key=lambda r: (r.cost, r.latency_b64_us, r.size_bytes))
    reason = (
        f"lowest cost {best.cost:.3f} of {len(passed)} passing: "
        f"{parent.latency_b64_us / best.latency_b64_us:.1f}x faster at batch 64, "
        f"{parent.size_bytes / best.size_bytes:.1f}x smaller, {metric} drop {best.drop:.4f}"
    )
    out = [
        replace(r, status="chosen", reason=reason)
        if r.name == best.name
        else replace(r, reason=f"passed; cost {r.cost:.3f} above the chosen {best.cost:.3f}")
        if r.status == "passed"
        else r
        for r in out
    ]
    return out, best.name


# -- the step -------------------------------------------------------------------------------


def compress_model(
    parent_dir: Path,
    prepared: PreparedData,
    params: CompressParams,
    eval_params: EvaluateParams,
    out_dir: Path,
    *,
    progress: Progress | None = None,
) -> CompressionReport:
    """Build, save and measure every variant of the parent; write the CSV, PNG and JSON.

    `parent_dir` is a registered version's folder (holding `model/`) or a model folder.
    Variants are saved (save_model layout) under `out_dir/variants/<name>/`.
    """
    say = progress or (lambda _msg: None)
    model_dir = model_folder(parent_dir)
    manifest = read_manifest(model_dir)
    if manifest["runtime"] != "torch" or manifest.get("quantization"):
        kind = f"{manifest['runtime']} {manifest.get('quantization') or ''}".strip()
        raise MlopsError(f"{model_dir}: compress needs a torch fp32 model, not {kind}")
    parent = load_predictor(model_dir)
    teacher = load_torch_model(model_dir)
    metric, higher = primary_metric(teacher.config.task, eval_params)
    data = _distill_data(prepared, parent.preprocessor, params.class_weighting)
    with single_thread():
        # Batches of 256 rows through a 64-wide MLP are too small to share: on a busy 2-core
        # machine two threads made 30 distillation epochs take 51 s instead of 4 s.
        built = build_variants(teacher, data, params, say)

    say("saving variants")
    variants_dir = out_dir / "variants"
    if variants_dir.exists():
        shutil.rmtree(variants_dir)
    paths, methods = {"parent": model_dir}, {"parent": {"method": "none (torch fp32 eager)"}}
    for b in built:
        extra = {"variant": b.name, "method": b.method, **b.extra}
        paths[b.name] = save_model(
            variants_dir / b.name, config=b.config, preprocessor=parent.preprocessor,
            spec=parent.spec, model=b.model, onnx_bytes=b.onnx_bytes, extra=extra,
            schema=manifest.get("schema"),
        )  # fmt: skip
        methods[b.name] = b.method

    say(f"measuring {len(paths)} models ({params.latency_repeats} calls per batch size)")
    results = measure(paths, methods, prepared.test, params, metric, higher)
    results, chosen = choose(results, teacher.config.task, metric, params)
    report = CompressionReport(
        task=teacher.config.task, primary_metric=metric, higher_is_better=higher,
        max_quality_drop=params.max_quality_drop, min_agreement=params.min_agreement,
        variants=results, chosen=chosen, out_dir=out_dir,
        csv_path=out_dir / "compression.csv", plot_path=out_dir / "compression.png",
        positive_class=parent.spec.positive_class,
        skipped=skipped_methods(teacher.config, params),
    )  # fmt: skip
    atomic_write_text(report.csv_path, report.frame().to_csv(index=False))
    atomic_write_json(out_dir / "compression.json", report.to_dict())
    plot_tradeoff(report, report.plot_path)
    return report


def default_ref(store: Store, dataset: str | None = None) -> str:
    """The version `mlops compress` takes when none is named: the workspace's data set's newest
    trained version that passed the gate (staging or production)."""
    from pipelines.datasets import resolve_dataset

    name = resolve_dataset(store, dataset)
    trained = [
        m
        for m in store.list_models(name=name)
        if m.method.get("kind") == "train" and m.stage in ("staging", "production")
    ]
    if not trained:
        raise MlopsError(
            f"data set {name!r} has no trained version in staging or production to compress: "
            "name one (`mlops compress NAME:VERSION`, see `mlops models list`)"
        )
    return trained[-1].ref


@dataclass(frozen=True)
class Compressed:
    """What `compress_and_register` did: the report (None when an existing child was reused),
    the child (None when no variant passed) and whether it was reused."""

    report: CompressionReport | None
    child: ModelRecord | None
    reused: bool = False


def existing_child(store: Store, parent: ModelRecord, params: CompressParams) -> ModelRecord | None:
    """The child already compressed from `parent` with these very params, if any."""
    wanted = params.model_dump(mode="json")
    for m in reversed(store.list_models(name=parent.name)):
        if m.parent_id == parent.id and m.lineage.get("params", {}).get("compress") == wanted:
            return m
    return None


def compress_and_register(
    ws: Workspace,
    store: Store,
    ref: str,
    params: CompressParams,
    eval_params: EvaluateParams,
    *,
    progress: Progress | None = None,
) -> Compressed:
    """Compress model version `ref`, register the chosen variant as its child, and gate it.

    The child is a candidate like any other: the gate stages it when it beats production (or,
    with none, stays within the quality tolerance of its parent); the child of a rejected
    parent is rejected. The same parent with the same compress params reuses its child: no new
    version. With no variant passing, nothing is registered.
    """
    parent = store.get_model(ref)
    reused = existing_child(store, parent, params)
    if reused is not None:
        return Compressed(None, reused, reused=True)
    parent_dir = ws.version_dir(parent.path)
    prepared_dir = parent_dir / "prepared"
    prepared = load_prepared(prepared_dir)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    out_dir = ws.reports_dir / "compress" / f"{parent.name}-{parent.version}-{stamp}"
    report = compress_model(parent_dir, prepared, params, eval_params, out_dir, progress=progress)
    best = report.chosen_result
    if best is None:
        return Compressed(report, None)

    child_dir = ws.models_dir / parent.name / f"compress-{parent.version}-{best.name}-{stamp}"
    try:
        shutil.copytree(best.path, child_dir / "model")
        # The child's own copy of the parent's splits: it is evaluated on exactly those rows.
        shutil.copytree(prepared_dir, child_dir / "prepared")
        reports = child_dir / "reports"
        reports.mkdir()
        for path in (report.csv_path, report.plot_path, out_dir / "compression.json"):
            shutil.copy2(path, reports / path.name)
        # Its stored metrics come from the copy as saved, in the registry's layout.
        tested = evaluate_predictor(load_predictor(child_dir / "model"), prepared.test)
        p = report.parent
        metrics = {
            **tested, "task": report.task, "primary_metric": report.primary_metric,
            "higher_is_better": report.higher_is_better,
            "baseline": parent.metrics.get("baseline", {}),
            "trivial": parent.metrics.get("trivial", {}),
            f"parent_{report.primary_metric}": p.primary, "quality_drop": best.drop,
            "agreement": best.agreement, "params": best.params, "size_bytes": best.size_bytes,
            "latency_b1_us": best.latency_b1_us, "latency_b64_us": best.latency_b64_us,
            "throughput_b64": best.throughput_b64, "size_ratio": p.size_bytes / best.size_bytes,
            "speedup_b64": p.latency_b64_us / best.latency_b64_us,
            "speedup_b1": p.latency_b1_us / best.latency_b1_us,
        }  # fmt: skip
        compression = {
            "chosen": best.name, "row": best.row(report.primary_metric), "why": best.reason,
            "rule": RULE, "tolerance": quality_tolerance(params, report.task, p.primary),
            "table": [v.row(report.primary_metric) for v in report.variants],
        }  # fmt: skip
        lineage = {
            **parent.lineage, "parent": parent.ref, "parent_id": parent.id,
            "parent_path": parent.path, "compression_report": ws.home_relative(out_dir),
            "params": {**parent.lineage.get("params", {}),
                       "compress": params.model_dump(mode="json")},
            "compression": compression,
        }  # fmt: skip
        child = store.register_model(
            name=parent.name,
            dataset=parent.dataset,
            path=ws.home_relative(child_dir),
            runtime=best.runtime,
            metrics=metrics,
            lineage=lineage,
            batch_ids=parent.batch_ids,
            parent_id=parent.id,
            method={"kind": "compress", **best.method, "variant": best.name},
        )
    except BaseException:
        shutil.rmtree(child_dir, ignore_errors=True)
        raise
    tolerance = quality_tolerance(params, report.task, report.parent.primary)
    return Compressed(report, gate(ws, store, child, eval_params, parent_tolerance=tolerance))
