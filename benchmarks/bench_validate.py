"""Benchmark: the full ai4i expectation suite in GX against the same checks written in pandas.

Run: `python benchmarks/bench_validate.py [--sizes 10000,100000,1000000] [--repeats 5]`.
Writes benchmarks/results/validate.md. Times are medians of the repeats, on in-memory frames
(reading the parquet file is not included). The GX validation is timed apart from the Data Docs
build, and the production path (the checkpoint with UpdateDataDocsAction, as `mlops validate`
runs it) is timed as a whole. Where the time goes inside GX is measured directly: the batch
fingerprint GX computes for every pandas batch, and the per-rule copies of the frame.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

from mlops.settings import Workspace  # noqa: E402
from pipelines import expectations, validate  # noqa: E402
from pipelines.sources import generate_ai4i  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "validate.md"
LIMITS = {"min_rows": 100, "max_rows": 10_000_000}
TARGET_ROWS_PER_S = 200_000


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """The median of `repeats` runs; every run is logged, so outliers can be seen."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    if repeats > 2:
        runs = ", ".join(f"{t:.2f}" for t in times)
        log(f"    runs: {runs} s (median {statistics.median(times):.2f})")
    return statistics.median(times), out


# -- the same checks, hand-written in pandas ---------------------------------------------------


def _share_ok(ok: pd.Series, mostly: float) -> bool:
    return bool(len(ok) == 0 or ok.mean() >= mostly)


def pandas_checks(df: pd.DataFrame, exps: list[Any], limits: dict[str, int]) -> list[bool]:
    """One verdict per expectation of the suite; parameters read from the suite itself."""
    out = []
    for e in exps:
        t = e.expectation_type
        if t == "expect_table_columns_to_match_set":
            out.append(set(df.columns) == set(e.column_set))
            continue
        if t == "expect_table_row_count_to_be_between":
            out.append(limits["min_rows"] <= len(df) <= limits["max_rows"])
            continue
        if t == "expect_column_pair_values_a_to_be_greater_than_b":
            both = df[[e.column_A, e.column_B]].dropna()
            out.append(_share_ok(both[e.column_A] > both[e.column_B], e.mostly))
            continue
        s = df[e.column]
        if t == "expect_column_type_to_be":
            out.append(str(s.dtype) == e.type_)
        elif t == "expect_column_values_to_be_in_type_list":
            if s.dtype == object:
                out.append(bool(s.dropna().map(lambda v: type(v).__name__).isin(e.type_list).all()))
            else:
                out.append(str(s.dtype) in e.type_list)
        elif t == "expect_column_values_to_not_be_null":
            out.append(_share_ok(s.notna(), e.mostly))
        elif t == "expect_column_values_to_be_unique":
            out.append(not s.dropna().duplicated(keep=False).any())
        elif t == "expect_column_values_to_be_in_set":
            out.append(_share_ok(s.dropna().isin(e.value_set), e.mostly))
        elif t == "expect_column_values_to_be_between":
            v = s.dropna()
            out.append(_share_ok((v >= e.min_value) & (v <= e.max_value), e.mostly))
        else:
            raise ValueError(f"no pandas version of {t}")
    return out


# -- GX runs ---------------------------------------------------------------------------------


def gx_setup(ws: Workspace) -> tuple[Any, Any]:
    """The workspace's GX context, plus a checkpoint without actions for validation-only runs."""
    import great_expectations as gx

    validate.init_gx(ws)
    ctx = validate.open_gx(ws)
    prod = ctx.checkpoints.get("ai4i")
    bare = ctx.checkpoints.add(
        gx.Checkpoint(
            name="ai4i-no-actions",
            validation_definitions=prod.validation_definitions,
            actions=[],
            result_format=validate.RESULT_FORMAT,
        )
    )
    return ctx, bare


def gx_validate(checkpoint: Any, df: pd.DataFrame) -> Any:
    params = expectations.row_count_parameters(**LIMITS)
    return checkpoint.run(batch_parameters={"dataframe": df}, expectation_parameters=params)


def build_docs(ctx: Any, result: Any) -> None:
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
    )

    key = next(iter(result.run_results))
    ctx.build_data_docs(
        site_names=[validate.DOCS_SITE],
        resource_identifiers=[key, ExpectationSuiteIdentifier(name="ai4i")],
    )


def with_result_format(ctx: Any, bare: Any, fmt: str) -> Any:
    import great_expectations as gx

    return ctx.checkpoints.add_or_update(
        gx.Checkpoint(
            name=f"ai4i-{fmt.lower()}",
            validation_definitions=bare.validation_definitions,
            actions=[],
            result_format={"result_format": fmt, "partial_unexpected_count": 10},
        )
    )


def profile_run(checkpoint: Any, df: pd.DataFrame) -> dict[str, float]:
    """Seconds of one profiled GX run spent in the batch fingerprint and whole-frame filters."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.runcall(gx_validate, checkpoint, df)
    total = time.perf_counter() - t0
    stats: dict[Any, Any] = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    out = {"total": total, "fingerprint": 0.0, "filter": 0.0, "filter_calls": 0.0}
    for (path, _, func), (_, calls, _, cumtime, _) in stats.items():
        if func == "hash_pandas_dataframe" and "great_expectations" in path:
            out["fingerprint"] += cumtime
        elif func == "_getitem_bool_array" and path.endswith("frame.py"):
            out["filter"] += cumtime
            out["filter_calls"] += calls
    return out


def earlier_suite_checkpoint(ctx: Any) -> Any:
    """The suite as first written: per-value type checks on the text columns, a Product ID regex."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    exps = []
    for e in expectations.ai4i_expectations():
        if e.expectation_type == "expect_column_type_to_be":
            e = gxe.ExpectColumnValuesToBeInTypeList(column=e.column, type_list=["str"])
        exps.append(e)
    exps.append(gxe.ExpectColumnValuesToMatchRegex(column="Product ID", regex=r"^[LMH]\d+$"))
    suite = ctx.suites.add(expectations.build_suite("ai4i-earlier", exps))
    vd = ctx.validation_definitions.add(
        gx.ValidationDefinition(
            name="ai4i-earlier", data=validate._batch_definition(ctx), suite=suite
        )
    )
    return ctx.checkpoints.add(
        gx.Checkpoint(
            name="ai4i-earlier",
            validation_definitions=[vd],
            actions=[],
            result_format=validate.RESULT_FORMAT,
        )
    )


def corrupt(df: pd.DataFrame) -> pd.DataFrame:
    """1% of rows out of range in three columns: the failing path collects unexpected values."""
    bad = df.copy()
    idx = bad.index[::100]
    bad.loc[idx, "Air temperature [K]"] = 27.0
    bad.loc[idx, "Torque [Nm]"] = -1.0
    bad.loc[idx, "Type"] = "X"
    return bad


# -- the run ---------------------------------------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import great_expectations as gx

    return (
        f"{os.cpu_count()} cores ({cpu}), no GPU, {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}, great-expectations {gx.__version__}, "
        f"pandas {pd.__version__}, numpy {np.__version__}"
    )


def run(sizes: list[int], repeats: int) -> str:
    load_before = os.getloadavg()[0]
    rows_out, extra = [], []
    with tempfile.TemporaryDirectory(prefix="bench-validate-") as tmp:
        ws = Workspace(root=Path(tmp), home=Path(tmp) / ".mlops", database_url="sqlite://")
        log("GX context and ai4i suite")
        ctx, bare = gx_setup(ws)
        suite_exps = expectations.ai4i_expectations()
        n_exp = len(suite_exps)
        gx_validate(bare, generate_ai4i(1000, seed=1))  # warm-up: imports, metric registry
        for n in sizes:
            log(f"{n:>9,} rows: generating")
            df = generate_ai4i(n, seed=1)
            reps = repeats
            log(f"{n:>9,} rows: GX validation x{reps}")
            t_gx, res = timed(partial(gx_validate, bare, df), reps)
            if not res.success:
                raise SystemExit(f"clean batch of {n} rows failed the suite: false alarm")
            log(f"{n:>9,} rows: Data Docs build x{reps}")
            t_docs, _ = timed(partial(build_docs, ctx, res), reps)
            log(f"{n:>9,} rows: production checkpoint (validation + UpdateDataDocsAction) x{reps}")
            run_suite = partial(validate.run_suite, ws, "ai4i", df, run_name=f"bench-{n}", **LIMITS)
            t_prod, _ = timed(run_suite, reps)
            log(f"{n:>9,} rows: pandas x{reps}")
            t_pd, verdicts = timed(partial(pandas_checks, df, suite_exps, LIMITS), reps)
            if not all(verdicts):
                raise SystemExit(f"pandas checks disagree with GX on the clean {n}-row batch")
            rows_out.append((n, t_gx, t_docs, t_prod, t_pd))
            log(
                f"{n:>9,} rows: GX {t_gx:.2f}s ({n / t_gx:,.0f} rows/s), docs {t_docs:.2f}s, "
                f"checkpoint {t_prod:.2f}s, pandas {t_pd:.3f}s ({n / t_pd:,.0f} rows/s)"
            )
        n = sizes[-1]
        df = generate_ai4i(n, seed=1)
        log(f"{n:>9,} rows: result formats and a failing batch")
        for fmt in ("BOOLEAN_ONLY", "BASIC", "SUMMARY", "COMPLETE"):
            cp = with_result_format(ctx, bare, fmt)
            t, _ = timed(partial(gx_validate, cp, df), 3)
            extra.append((f"result_format {fmt}, clean batch", t, n / t))
            log(f"  {fmt}: {t:.2f}s")
        earlier = earlier_suite_checkpoint(ctx)
        t_earlier, _ = timed(lambda: gx_validate(earlier, df), 3)
        extra.append(
            (
                "earlier suite (per-value text type checks + Product ID regex)",
                t_earlier,
                n / t_earlier,
            )
        )
        log(f"  earlier suite: {t_earlier:.2f}s")
        bad = corrupt(df)
        t_bad, res_bad = timed(lambda: gx_validate(bare, bad), 3)
        assert not res_bad.success
        extra.append(("BASIC, failing batch (1% bad rows in 3 columns)", t_bad, n / t_bad))
        t_pd_bad, _ = timed(lambda: pandas_checks(bad, suite_exps, LIMITS), 3)
        extra.append(("pandas, same failing batch", t_pd_bad, n / t_pd_bad))
        # Where GX's own time goes: one profiled run, two costs the checks do not need.
        profile = profile_run(bare, df)
    load_after = os.getloadavg()[0]
    return report(rows_out, extra, n_exp, repeats, (load_before, load_after), profile, n)


def report(
    rows: list[tuple[int, float, float, float, float]],
    extra: list[tuple[str, float, float]],
    n_exp: int,
    repeats: int,
    load: tuple[float, float],
    profile: dict[str, float],
    n_big: int,
) -> str:
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## Data validation (Great Expectations)",
        "",
        f"`python benchmarks/bench_validate.py`, {today}. Machine: {machine()}. "
        f"Load average {load[0]:.1f} before, {load[1]:.1f} after (a shared machine: other jobs "
        "ran beside this one; times are medians of repeated runs).",
        "",
        f"The full ai4i suite ({n_exp} expectations: column set, row count, a type and a non-null "
        "rule per column, physical ranges, category and label sets, UDI uniqueness), run by a "
        "GX checkpoint on an in-memory frame with result_format BASIC, against the same checks "
        "hand-written in pandas (parameters read from the suite) in the same run. "
        f"Median of {repeats} runs each (3 for the variants below).",
        "",
        "| rows | GX validation (s) | GX rows/s | Data Docs build (s) | checkpoint + docs, "
        "as `mlops validate` (s) | pandas (s) | pandas rows/s | GX / pandas |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, t_gx, t_docs, t_prod, t_pd in rows:
        lines.append(
            f"| {n:,} | {t_gx:.2f} | {n / t_gx:,.0f} | {t_docs:.2f} | {t_prod:.2f} | "
            f"{t_pd:.3f} | {n / t_pd:,.0f} | {t_gx / t_pd:.0f}x |"
        )
    n, t_gx = rows[-1][0], rows[-1][1]
    verdict = "meets" if n / t_gx >= TARGET_ROWS_PER_S else "MISSES"
    lines += [
        "",
        f"Target: at least {TARGET_ROWS_PER_S:,} rows/s for the full suite at 10^6 rows: "
        f"GX validation {verdict} it ({n / t_gx:,.0f} rows/s at {n:,} rows).",
        "",
        f"At {n_big:,} rows, validation only:",
        "",
        "| variant | s | rows/s |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {t:.2f} | {rps:,.0f} |" for name, t, rps in extra]
    by = {name: rps for name, _, rps in extra}
    lines += [
        "",
        "What we found and changed (profiled with cProfile at 10^6 rows):",
        "",
        "- **Per-value type checks on text columns.** For an `object` column GX checks "
        "`expect_column_values_to_be_in_type_list` value by value in Python (about 1 s per "
        "10^6 rows per column). Text columns now get `expect_column_type_to_be` (a dtype check) "
        "and their values are covered by the set rules; numeric columns keep the type-list rule, "
        "which is a dtype check unless the column turned into text, and then it reports the bad "
        "values.",
        f"- **A regex on Product ID** duplicated the Type set rule at ~1 s per 10^6 rows; it "
        f"was dropped. The suite as first written (both costs in) ran at "
        f"{by['earlier suite (per-value text type checks + Product ID regex)']:,.0f} rows/s "
        f"in this run; the current one at {by['result_format BASIC, clean batch']:,.0f}.",
        f"- **result_format.** SUMMARY (GX's default for checkpoints) adds value counts of the "
        f"unexpected values: {by['result_format SUMMARY, clean batch']:,.0f} rows/s against "
        f"{by['result_format BASIC, clean batch']:,.0f} for BASIC (counts, observed value and "
        "10 sample unexpected values, which is what the store and the CLI table show). We use "
        "BASIC. BOOLEAN_ONLY would be faster still but says nothing about what was wrong.",
        f"- **Costs inside GX we left alone.** In one cProfile'd run at {n_big:,} rows "
        f"({profile['total']:.1f} s under the profiler), {profile['fingerprint']:.1f} s went to "
        "the fingerprint GX takes of every pandas batch (`hash_pandas_object` over the whole "
        f"frame) and {profile['filter']:.1f} s to null filters that take a boolean mask of the "
        f"*whole* frame, copying every column, for each value rule ({profile['filter_calls']:.0f} "
        "times). Neither is configurable without patching GX internals, which we do not do: they "
        "are much of the gap to pandas.",
        f"- **Fixed cost per run.** At {rows[0][0]:,} rows GX's time ({rows[0][1]:.2f} s) is "
        f"almost all bookkeeping that does not grow with the rows: the metric graph of {n_exp} "
        "expectations, pydantic copies of each one, the checkpoint's freshness check against "
        "its files, and writing the result JSON. Rows per second only mean something for large "
        "batches.",
        "- **Data Docs** are built once per run for the new validation page, the suite page and "
        "the index; their cost does not grow with the rows, so they are timed apart. The index "
        "reads every stored result on each build (~10 ms each), so the workspace's GX config "
        f"lists only the latest {validate.INDEX_LIMIT} there; every page stays on disk and the "
        "store keeps each one's path.",
        "- **checkpoint + docs** is `pipelines.validate.run_suite`, the call `mlops validate` "
        "makes: it also takes the GX file lock, opens the file context, loads the checkpoint "
        "and checks it is fresh against its files, and collects the failures.",
        "- The pandas baseline checks the same rules with the same parameters but records only "
        "verdicts; it has no result store, no rendering and no per-rule metric graph.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    text = run(sizes, args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    log(f"wrote {args.out}")
    print(text)


if __name__ == "__main__":
    main()
