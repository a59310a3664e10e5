"""Benchmark: the gate's paired bootstrap, vectorised (pipelines/bootstrap.py) against the loop
it replaced (one scikit-learn call per model per resample, the gate's `metric_value`).

Run: `python benchmarks/bench_gate.py [--samples 1000] [--loop-samples 100]`.
Writes benchmarks/results/gate.md. Both ways score the same resamples; the loop's time per
1,000 resamples is extrapolated from `--loop-samples` (it is linear in them), the vectorised
one is timed at `--samples`. The largest difference between the two ways' interval bounds on
the shared resamples is reported beside the times.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines import bootstrap  # noqa: E402
from pipelines.gate import Scored, metric_value, paired_bootstrap  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "gate.md"
# (what, task, classes, test rows, metric): the slow case is the 10-class set of
# 1,800 rows (its test split: 360 rows), scored on macro PR-AUC.
CASES = [
    ("binary", "classification", 2, 2000, "pr_auc"),
    ("3 classes", "classification", 3, 100, "pr_auc"),
    ("10 classes", "classification", 10, 360, "pr_auc"),
    ("10 classes, large", "classification", 10, 4000, "pr_auc"),
    ("binary, roc_auc", "classification", 2, 2000, "roc_auc"),
    ("regression", "regression", 0, 2000, "rmse"),
]


def _scored(task: str, k: int, n: int, seed: int) -> Scored:
    rng = np.random.default_rng(seed)
    if task == "regression":
        y = rng.normal(50, 10, n)
        return Scored(task, y, y + rng.normal(0, 4, n), y + rng.normal(0, 5, n), None)
    y = rng.integers(0, k, n)

    def proba(noise: float) -> np.ndarray:
        logits = np.eye(k)[y] * 2 + rng.normal(scale=noise, size=(n, k))
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    return Scored(task, y, proba(1.0), proba(1.3), 1 if k == 2 else None)


def _loop(metric: str, s: Scored, rows: np.ndarray) -> np.ndarray:
    out = []
    for r in rows:
        a = metric_value(metric, s, s.candidate, r)
        b = metric_value(metric, s, s.reference, r)
        if a is not None and b is not None:
            out.append(a - b if metric not in ("rmse", "mae") else b - a)
    return np.asarray(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--loop-samples", type=int, default=100)
    args = ap.parse_args()
    rows_out = []
    for what, task, k, n, metric in CASES:
        s = _scored(task, k, n, seed=n + k)
        higher = metric not in ("rmse", "mae")
        t0 = time.perf_counter()
        paired_bootstrap(metric, higher, s, samples=args.samples, seed=0)
        vec = time.perf_counter() - t0
        rng = np.random.default_rng(1)
        rows = rng.integers(0, n, (args.loop_samples, n))
        t0 = time.perf_counter()
        looped = _loop(metric, s, rows)
        loop_s = (time.perf_counter() - t0) * args.samples / args.loop_samples
        w = np.stack([np.bincount(r, minlength=n) for r in rows]).astype(np.float64)
        if task == "regression":
            a = bootstrap.regression(metric, w, s.y, s.candidate)
            b = bootstrap.regression(metric, w, s.y, s.reference)
        else:
            a = bootstrap.classification(metric, w, s.y, s.candidate, s.positive)
            b = bootstrap.classification(metric, w, s.y, s.reference, s.positive)
        d = a - b if higher else b - a
        d = d[np.isfinite(d)]
        same = float(np.max(np.abs(np.sort(d) - np.sort(looped)))) if len(d) == len(looped) else -1
        rows_out.append((what, n, metric, loop_s, vec, loop_s / vec, same))
        print(f"{what}: loop {loop_s:.2f} s, vectorised {vec:.3f} s", file=sys.stderr)
    host = f"{platform.node()} ({os.cpu_count()} cores, {platform.machine()})"
    lines = [
        "# The gate's paired bootstrap",
        "",
        f"{dt.date.today().isoformat()}, {host}; `python benchmarks/bench_gate.py`. Seconds for "
        f"{args.samples:,} resamples of both models (the loop's extrapolated from "
        f"{args.loop_samples}); the largest difference of the two ways' improvements on the same "
        "resamples shows they compute the same numbers.",
        "",
        "| data | test rows | metric | loop (scikit-learn per resample) | vectorised | ratio | "
        "largest difference |",
        "|---|---|---|---|---|---|---|",
    ]
    for what, n, metric, loop_s, vec, ratio, same in rows_out:
        lines.append(
            f"| {what} | {n:,} | {metric} | {loop_s:.2f} s | {vec:.3f} s | "
            f"{f'{ratio:,.0f}' if ratio >= 10 else f'{ratio:.2g}'}x | "
            f"{same:.1e} |"
        )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
