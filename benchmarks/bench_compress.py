"""Compression: the chosen variant against torch fp32 eager, same inputs, same run.

Trains the ai4i model with the project's trainer (20k rows, default train params), compresses it
with the default compress params (more latency calls, for steadier medians), and reports the
chosen variant against the parent run by torch eager: size ratio, latency ratios at batch 64 and
1, quality drop. Targets: >= 3.5x smaller and >= 2.5x faster at batch 64 on the CPU, quality drop
<= 0.5 points. A what-if run repeats it on a wider network (--what-if), to show how the ratios
depend on the model's size rather than on the method.

    python benchmarks/bench_compress.py [--rows 20000] [--repeats 1000] [--runs 5]
                                        [--what-if 256,256]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import onnxruntime
import torch
from rich.console import Console

from mlops.params import CompressParams, EvaluateParams, PrepareParams, TrainParams
from pipelines.compress import compress_model, measure
from pipelines.compress_report import CompressionReport, human_bytes, report_table
from pipelines.model import save_model
from pipelines.prepare import PreparedData, prepare
from pipelines.sources import AI4I_SPEC, generate_ai4i
from pipelines.train import train_model

RESULTS = Path(__file__).parent / "results" / "compress.md"
TARGET_SIZE, TARGET_SPEED, TARGET_DROP = 3.5, 2.5, 0.005
console = Console(stderr=True)


def run(
    data: PreparedData, train: TrainParams, params: CompressParams, work: Path
) -> CompressionReport:
    t0 = time.perf_counter()
    console.rule(f"train MLP {train.hidden} on {len(data.train)} rows")
    result = train_model(data, train, progress=True)
    console.print(f"trained in {time.perf_counter() - t0:.1f}s (best epoch {result.best_epoch})")
    parent = save_model(work / "parent", config=result.config, preprocessor=data.preprocessor,
                        spec=data.spec, model=result.model)  # fmt: skip
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        console.print(f"[dim]{time.perf_counter() - t0:6.1f}s[/] {msg}", highlight=False)

    report = compress_model(parent, data, params, EvaluateParams(), work / "compress", progress=say)
    say("done")
    console.print(report_table(report, width=console.width))
    return report


def remeasure(report: CompressionReport, data: PreparedData, params: CompressParams,
              runs: int) -> dict[str, list[float]]:  # fmt: skip
    """Latency ratios chosen vs parent over `runs` measurements (the report's own is the first):
    on a shared machine one measurement can be off; the spread says by how much."""
    best, p = report.chosen_result, report.parent
    out: dict[str, list[float]] = {"speed64": [], "speed1": []}
    if best is None:
        return out
    out["speed64"].append(p.latency_b64_us / best.latency_b64_us)
    out["speed1"].append(p.latency_b1_us / best.latency_b1_us)
    paths = {"parent": Path(p.path), best.name: Path(best.path)}
    methods = {"parent": p.method, best.name: best.method}
    for i in range(runs - 1):
        console.print(f"re-measuring parent and {best.name}: {i + 2}/{runs}")
        again = measure(paths, methods, data.test, params, report.primary_metric,
                        report.higher_is_better)  # fmt: skip
        out["speed64"].append(again[0].latency_b64_us / again[1].latency_b64_us)
        out["speed1"].append(again[0].latency_b1_us / again[1].latency_b1_us)
    return out


def _spread(values: list[float]) -> str:
    if len(values) < 2:
        return ""
    return f" (median of {len(values)}: {statistics.median(values):.2f}x, " \
           f"range {min(values):.2f}-{max(values):.2f}x)"  # fmt: skip


def ratios(report: CompressionReport) -> dict[str, float] | None:
    best, p = report.chosen_result, report.parent
    if best is None:
        return None
    return {
        "size": p.size_bytes / best.size_bytes,
        "speed64": p.latency_b64_us / best.latency_b64_us,
        "speed1": p.latency_b1_us / best.latency_b1_us,
        "drop": best.drop or 0.0,
        "agreement": best.agreement,
    }


def _table(report: CompressionReport) -> list[str]:
    m = report.primary_metric
    lines = [
        f"| variant | runtime | hidden | params | file size | µs @1 | µs @64 | rows/s @64 | {m} "
        "| drop (points) | agreement | cost | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in report.variants:
        status = f"**{v.status}**" if v.status == "chosen" else v.status
        if v.status == "rejected":
            status += f": {v.reason}"
        lines.append(
            f"| {v.name} | {v.runtime} | {'-'.join(map(str, v.hidden))} | {v.params:,} | "
            f"{human_bytes(v.size_bytes)} | {v.latency_b1_us:.1f} | {v.latency_b64_us:.1f} | "
            f"{v.throughput_b64:,.0f} | {v.primary:.4f} | {100 * (v.drop or 0):+.2f} | "
            f"{v.agreement:.2%} | {v.cost:.3f} | {status} |"
        )
    return lines


def _verdict(r: dict[str, float] | None, spread: dict[str, list[float]] | None = None) -> list[str]:
    if r is None:
        return ["No variant passed the policy: nothing would be registered."]

    sp = spread or {"speed64": [], "speed1": []}

    def mark(ok: bool) -> str:
        return "met" if ok else "**missed**"

    return [
        "| measure | chosen vs torch fp32 eager | target | |",
        "|---|---|---|---|",
        f"| file size | {r['size']:.2f}x smaller | >= {TARGET_SIZE}x | "
        f"{mark(r['size'] >= TARGET_SIZE)} |",
        f"| latency, batch 64 | {r['speed64']:.2f}x faster{_spread(sp['speed64'])} | "
        f">= {TARGET_SPEED}x | "
        f"{mark(r['speed64'] >= TARGET_SPEED)} |",
        f"| latency, batch 1 | {r['speed1']:.2f}x faster{_spread(sp['speed1'])} | | |",
        f"| quality drop | {100 * r['drop']:+.2f} points | <= {100 * TARGET_DROP:.1f} points | "
        f"{mark(r['drop'] <= TARGET_DROP)} |",
        f"| prediction agreement with the parent | {r['agreement']:.2%} | >= 99% | "
        f"{mark(r['agreement'] >= 0.99)} |",
    ]


def _analysis(
    report: CompressionReport,
    what_if: CompressionReport | None,
    what_if_spread: dict[str, list[float]] | None,
) -> list[str]:
    by = {v.name: v for v in report.variants}
    p, f32, i8 = by["parent"], by["onnx-fp32"], by["onnx-int8"]
    m = report.primary_metric
    lines = [
        "## What limits it",
        "",
        f"- **Per-call overhead, not arithmetic.** The parent's {p.params:,} weights cost about "
        f"{2 * p.params * 64 / 1e6:.1f} MFLOP per batch of 64. Torch eager spends "
        f"{p.latency_b1_us:.0f} µs on one row and {p.latency_b64_us:.0f} µs on 64, so most of a "
        f"call is Python dispatch through {len(p.hidden) * 3 + 1} modules. ONNX Runtime runs the "
        f"same graph in {f32.latency_b1_us:.0f} / {f32.latency_b64_us:.0f} µs: the runtime switch "
        f"alone gives {p.latency_b64_us / f32.latency_b64_us:.1f}x at batch 64, with no change "
        "to the function (agreement 100 %).",
    ]
    if i8.latency_b64_us > f32.latency_b64_us:
        lines.append(
            f"- **int8 buys size, not speed, at this width.** Dynamic quantization adds a "
            f"quantize step per layer, which costs more than 64-wide int8 matmuls save: "
            f"onnx-int8 takes {i8.latency_b64_us:.0f} µs at batch 64 against onnx-fp32's "
            f"{f32.latency_b64_us:.0f} µs, while its file is "
            f"{f32.size_bytes / i8.size_bytes:.1f}x smaller; the policy's cost (latency x size) "
            "weighs both."
        )
    else:
        lines.append(
            f"- **int8 is smaller and faster here**: onnx-int8 {i8.latency_b64_us:.0f} µs at "
            f"batch 64 against onnx-fp32's {f32.latency_b64_us:.0f} µs, "
            f"{f32.size_bytes / i8.size_bytes:.1f}x smaller."
        )
    lines.append(
        "- **File size has a floor.** The raw weights are "
        f"{4 * p.params / 1000:.1f} kB in fp32 and {p.params / 1000:.1f} kB in int8; torch's zip "
        f"container adds about {(p.size_bytes - 4 * p.params) / 1000:.1f} kB to the parent. "
        "ONNX files keep short tensor names (`compact_onnx`): the exporter's and quantizer's "
        "descriptive names weighed almost 3 kB, as much as half the int8 weights."
    )
    smaller = [by[n] for n in ("pruned-onnx-fp32", "student-onnx-fp32")]
    lost = [v for v in smaller if v.status == "rejected"]
    if lost:
        told = "; ".join(
            f"{v.name} ({'-'.join(map(str, v.hidden))}): {v.agreement:.1%} agreement, {m} "
            f"drop {100 * (v.drop or 0):+.2f} points, {p.size_bytes / v.size_bytes:.1f}x "
            f"smaller and {p.latency_b64_us / v.latency_b64_us:.1f}x faster"
            for v in lost
        )
        lines.append(
            "- **Smaller networks move the decision boundary.** The parent is trained with class "
            "weighting, so it flags far more rows as failures than there are and many rows sit "
            "near its boundary; a network with fewer units draws it a little differently. "
            f"Rejected: {told}. The 16-unit student cannot represent the product-shaped failure "
            "rules (power = torque x speed, wear x torque) that the parent learned."
        )
    if what_if is not None:
        r = ratios(what_if)
        wp, wb = what_if.parent, what_if.chosen_result
        wby = {v.name: v for v in what_if.variants}
        int8_faster = wby["onnx-int8"].latency_b64_us < wby["onnx-fp32"].latency_b64_us
        int8_verb = "also speeds up" if int8_faster else "still does not speed up"
        lines += [
            "",
            f"## What-if: a wider parent ({'-'.join(map(str, wp.hidden))}, same data and trainer)",
            "",
            f"Parent: {wp.params:,} weights, {human_bytes(wp.size_bytes)}, "
            f"{wp.latency_b64_us:.0f} µs at batch 64, {what_if.primary_metric} "
            f"{wp.primary:.4f} (64-64: {p.primary:.4f}). At this width int8 "
            f"{int8_verb} "
            f"ONNX Runtime ({wby['onnx-int8'].latency_b64_us:.0f} vs "
            f"{wby['onnx-fp32'].latency_b64_us:.0f} µs at batch 64).",
            "",
            *_table(what_if),
            "",
            *_verdict(r, what_if_spread),
        ]
        best = report.chosen_result
        if wb is not None and best is not None:
            gain = ((wb.primary or 0.0) - (best.primary or 0.0)) * (
                1 if report.higher_is_better else -1
            )
            lines += [
                "",
                "**On the default architecture.** The ratios depend on how much of a call is "
                "fixed overhead, so a wider parent compresses by a similar factor; it does not "
                f"serve faster: its chosen variant takes {wb.latency_b64_us:.0f} µs at batch 64 "
                f"against {best.latency_b64_us:.0f} µs for the 64-64's, for a {m} difference of "
                f"{100 * gain:+.2f} points on this split. "
                + (
                    "The 64-64 default is the right size for ai4i; no change proposed."
                    if gain <= report.max_quality_drop
                    else "The wider parent is better by more than the tolerance here: worth a "
                    "proper comparison (several seeds) before changing train.hidden."
                ),
            ]
    return lines


def write_results(
    report: CompressionReport,
    what_if: CompressionReport | None,
    args: argparse.Namespace,
    data: PreparedData,
    spreads: tuple[dict[str, list[float]], dict[str, list[float]] | None],
) -> None:
    r = ratios(report)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    best = report.chosen_result
    text = [
        "# Compression",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: 2 cores, no GPU ({platform.machine()}, {platform.processor() or 'cpu'}); "
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; load average "
        f"{load:.1f} (shared machine: latencies are noisy, ratios within one run less so)",
        f"- data: ai4i {args.rows} rows, seed {args.seed} ({len(data.train)} train, "
        f"{len(data.test)} test rows); model: the project's trainer with default train params "
        f"(MLP {'-'.join(map(str, report.parent.hidden))}, class weighting, 40 epochs, patience 6)",
        f"- measured in one run on the same test rows: one thread for every runtime "
        f"(torch.set_num_threads(1), ORT intra_op_num_threads=1); latency = median of "
        f"{args.repeats} calls per model and batch size after a warm-up, interleaved in 5 rounds "
        "so machine load falls on all alike; file size = bytes of the weights file on disk",
        f"- policy: {report.rule}; max_quality_drop {report.max_quality_drop:g} "
        f"({100 * report.max_quality_drop:.1f} points of {report.primary_metric})",
        "",
        "## All variants of the ai4i model",
        "",
        *_table(report),
        "",
        f"## Chosen: {best.name if best else 'none'}, against torch fp32 eager",
        "",
        *_verdict(r, spreads[0]),
        "",
        "The table above is the run the choice was made on; the latency ratios in brackets "
        f"re-measure the parent and the chosen variant {args.runs - 1} more times in the same "
        "process, to show how much the shared machine moves them.",
        "",
        *_analysis(report, what_if, spreads[1]),
        "",
        "Reproduce: `python benchmarks/bench_compress.py`.",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(text) + "\n")
    console.print(f"wrote {RESULTS}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1000, help="latency calls per model and batch")
    ap.add_argument("--runs", type=int, default=5, help="latency measurements of the chosen one")
    ap.add_argument(
        "--what-if", default="256,256", help="hidden widths of a wider parent ('' = skip)"
    )
    args = ap.parse_args()

    console.print(f"generating ai4i: {args.rows} rows")
    data = prepare({"bench": generate_ai4i(args.rows, args.seed)}, AI4I_SPEC, PrepareParams())
    params = CompressParams(latency_repeats=args.repeats)
    with tempfile.TemporaryDirectory(prefix="bench-compress-") as tmp:
        report = run(data, TrainParams(), params, Path(tmp) / "default")
        spread = remeasure(report, data, params, args.runs)
        what_if, what_if_spread = None, None
        if args.what_if:
            hidden = [int(h) for h in args.what_if.split(",")]
            what_if = run(data, TrainParams(hidden=hidden), params, Path(tmp) / "wide")
            what_if_spread = remeasure(what_if, data, params, args.runs)
        write_results(report, what_if, args, data, (spread, what_if_spread))


if __name__ == "__main__":
    main()
