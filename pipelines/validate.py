"""Validate: run a batch's expectation suite with a GX Checkpoint and apply the policy.

The GX file context lives in the workspace's `gx/`: suites (gx/expectations/<dataset>.json),
validation definitions and checkpoints are committed and reviewable; results and Data Docs go to
`gx/uncommitted/`, which gx/.gitignore keeps out of git. GX's file stores are not safe for
concurrent writers, so changes to the context and checkpoint runs (which rebuild the Data Docs
index) hold a file lock in the workspace home.

Policies: `block` records the batch as failed, `quarantine` also moves its file to
data/quarantine/ (still DVC-tracked and restorable), `warn` records it and lets it through.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, get_args
from urllib.parse import unquote, urlparse

import pandas as pd
from filelock import FileLock, Timeout

from mlops.errors import MlopsError
from mlops.params import Policy
from mlops.settings import Workspace
from mlops.store import BatchRecord, Store
from mlops.store.api import TRAINABLE_OUTCOMES
from pipelines import expectations, versioning

POLICIES: tuple[str, ...] = get_args(Policy)
DATASOURCE, ASSET, BATCH_DEFINITION = "mlops", "batches", "whole_batch"
DOCS_SITE = "local_site"
# BASIC gives counts, observed values and up to 10 unexpected values per expectation; SUMMARY
# (GX's default) adds value counts of the unexpected values and takes about half as long again
# on 10^6 rows (benchmarks/results/validate.md).
RESULT_FORMAT = {"result_format": "BASIC", "partial_unexpected_count": 10}
LOCK_TIMEOUT_S = 600
INDEX_LIMIT = 50  # validations listed on the Data Docs index page
GX_IGNORE = ("uncommitted/",)


@dataclass(frozen=True)
class ValidationReport:
    """What validating one batch found and what the policy made of it."""

    batch_id: str
    dataset: str
    suite: str
    policy: str
    outcome: str  # passed | warned | failed | quarantined
    success: bool
    evaluated: int
    failures: list[dict[str, Any]] = field(default_factory=list)
    docs_path: Path | None = None
    batch_path: str = ""
    # Set when this run found no suite and inferred one first: from which batch, and any warning.
    suite_inferred: SuiteInference | None = None

    @property
    def blocked(self) -> bool:
        return self.outcome in ("failed", "quarantined")

    def summary(self, limit: int = 3) -> str:
        """One line: the outcome, the first failures (column + rule) and the Data Docs page."""
        if self.success:
            text = (
                f"batch {self.batch_id} passed validation against suite {self.suite!r}: "
                f"all {self.evaluated} expectations met"
            )
        else:
            first = "; ".join(
                f"{f['column']}: {f['rule']}" + (f" ({f['risk']})" if f.get("risk") else "")
                for f in self.failures[:limit]
            )
            more = f" (+{len(self.failures) - limit} more)" if len(self.failures) > limit else ""
            text = (
                f"batch {self.batch_id} failed validation against suite {self.suite!r} "
                f"(policy {self.policy}: {self.outcome}): {len(self.failures)} of "
                f"{self.evaluated} expectations failed: {first}{more}"
            )
        return text + (f"; data docs: {self.docs_path}" if self.docs_path else "")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["docs_path"] = str(self.docs_path) if self.docs_path else None
        out["blocked"] = self.blocked
        if self.suite_inferred is not None:
            out["suite_inferred"] = self.suite_inferred.to_dict()
        return out


@dataclass(frozen=True)
class SuiteInference:
    """A suite inferred from a reference batch: where it went and what to be wary of."""

    dataset: str
    path: Path
    reference_batch: str
    rows: int
    warning: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


@dataclass(frozen=True)
class SuiteRun:
    """One checkpoint run: GX's suite validation result and this run's Data Docs page."""

    success: bool
    evaluated: int
    failures: list[dict[str, Any]]
    docs_path: Path | None
    result: Any


# -- the GX file context ---------------------------------------------------------------------


@contextmanager
def gx_lock(ws: Workspace) -> Iterator[None]:
    ws.locks_dir.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(ws.locks_dir / "gx.lock"), timeout=LOCK_TIMEOUT_S):
            yield
    except Timeout:
        raise MlopsError(
            f"timed out waiting {LOCK_TIMEOUT_S}s for the GX lock in {ws.locks_dir}"
        ) from None


def open_gx(ws: Workspace) -> Any:
    """The workspace's GX file context (created in ws.gx_dir when missing)."""
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    return gx.get_context(mode="file", project_root_dir=str(ws.root))


def suite_path(ws: Workspace, dataset: str) -> Path:
    return ws.gx_dir / "expectations" / f"{dataset}.json"


def init_gx(ws: Workspace) -> None:
    """Create the GX context in `gx/` with its pandas data source and the built-in ai4i suite.

    Idempotent; an existing ai4i suite (perhaps edited by hand) is left as it is.
    """
    from great_expectations.data_context.types.base import ProgressBarsConfig

    with gx_lock(ws):
        ctx = open_gx(ws)
        if ctx.variables.progress_bars is None:
            # tqdm bars from every metric computation would flood CLI output and flow logs.
            ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
            # The Data Docs index reads every stored result on every run (~10 ms each): list
            # only the latest. Every page stays on disk, and the store keeps each one's path.
            sites = ctx.variables.data_docs_sites
            sites[DOCS_SITE]["site_index_builder"]["validation_results_limit"] = INDEX_LIMIT
            ctx.variables.data_docs_sites = sites
            ctx.variables.save()
        _batch_definition(ctx)
        if not suite_path(ws, "ai4i").exists():
            _save_suite(ctx, expectations.build_suite("ai4i", expectations.ai4i_expectations()))
    _ensure_lines(ws.gx_dir / ".gitignore", GX_IGNORE)


def _ensure_lines(path: Path, lines: Iterable[str]) -> None:
    existing = path.read_text().splitlines() if path.exists() else []
    missing = [line for line in lines if line not in existing]
    if missing:
        path.write_text("\n".join([*existing, *missing]) + "\n")


def _batch_definition(ctx: Any) -> Any:
    try:
        asset = ctx.data_sources.get(DATASOURCE).get_asset(ASSET)
    except (KeyError, LookupError, ValueError):
        asset = ctx.data_sources.add_or_update_pandas(DATASOURCE).add_dataframe_asset(ASSET)
    try:
        return asset.get_batch_definition(BATCH_DEFINITION)
    except (KeyError, LookupError, ValueError):
        return asset.add_batch_definition_whole_dataframe(BATCH_DEFINITION)


def _save_suite(ctx: Any, suite: Any, *, new_suite: bool = True) -> None:
    """Save a suite with its data set's validation definition and checkpoint, replacing any.

    Delete-then-add, not `add_or_update`: GX's update compares every expectation pairwise
    (seconds for a suite of ~45 expectations) and `mlops init` runs this for every workspace.
    """
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction
    from great_expectations.exceptions import DataContextError

    factories = [ctx.checkpoints, ctx.validation_definitions] + [ctx.suites] * new_suite
    for factory in factories:
        with suppress(DataContextError, KeyError, ValueError):
            factory.delete(suite.name)
    if new_suite:
        suite = ctx.suites.add(suite)
    vd = ctx.validation_definitions.add(
        gx.ValidationDefinition(name=suite.name, data=_batch_definition(ctx), suite=suite)
    )
    ctx.checkpoints.add(
        gx.Checkpoint(
            name=suite.name,
            validation_definitions=[vd],
            actions=[UpdateDataDocsAction(name="update_data_docs", site_names=[DOCS_SITE])],
            result_format=RESULT_FORMAT,
        )
    )


def _checkpoint(ws: Workspace, ctx: Any, dataset: str, hint: str) -> Any:
    from great_expectations.exceptions import DataContextError

    if not suite_path(ws, dataset).exists():
        raise MlopsError(
            f"no expectation suite for data set {dataset!r} ({ws.relative(ws.gx_dir)}/"
            f"expectations/{dataset}.json): run `mlops validate --init {hint}` to infer one"
        )
    try:
        return ctx.checkpoints.get(dataset)
    except (DataContextError, KeyError, ValueError):
        # A suite added by hand (or copied from another workspace) has no checkpoint yet.
        _save_suite(ctx, ctx.suites.get(dataset), new_suite=False)
        return ctx.checkpoints.get(dataset)


# -- running a suite -------------------------------------------------------------------------


def run_suite(
    ws: Workspace,
    dataset: str,
    frame: pd.DataFrame,
    *,
    min_rows: int,
    max_rows: int,
    run_name: str = "adhoc",
) -> SuiteRun:
    """Run the data set's checkpoint on `frame`: validation, result store and Data Docs."""
    from great_expectations.core.run_identifier import RunIdentifier

    if not (ws.gx_dir / "great_expectations.yml").is_file():
        init_gx(ws)  # a workspace created before validation existed
    with gx_lock(ws):
        ctx = open_gx(ws)
        checkpoint = _checkpoint(ws, ctx, dataset, run_name)
        run_id = RunIdentifier(run_name=run_name, run_time=dt.datetime.now(dt.UTC))
        try:
            result = checkpoint.run(
                batch_parameters={"dataframe": frame},
                expectation_parameters=expectations.row_count_parameters(min_rows, max_rows),
                run_id=run_id,
            )
        except Exception as exc:  # GX raises its own types for a broken suite file or config
            raise MlopsError(f"GX could not run the {dataset!r} suite: {exc}") from exc
    key, suite_result = next(iter(result.run_results.items()))
    stats = suite_result.statistics
    return SuiteRun(
        success=bool(suite_result.success),
        evaluated=int(stats.get("evaluated_expectations", 0)),
        failures=failures_of(suite_result),
        docs_path=_docs_page(ctx, key),
        result=suite_result,
    )


def _docs_page(ctx: Any, key: Any) -> Path | None:
    for site in ctx.get_docs_sites_urls(resource_identifier=key, site_names=[DOCS_SITE]):
        url = site.get("site_url")
        if url and url.startswith("file://"):
            return Path(unquote(urlparse(url).path))
    return None


def failures_of(suite_result: Any) -> list[dict[str, Any]]:
    """Each failed expectation as a JSON-safe dict: column, rule, what was seen, the note."""
    out = []
    # Table-level rules first: a missing column explains the column-level failures after it.
    results = sorted(suite_result.results, key=lambda r: "column" in r.expectation_config.kwargs)
    for r in results:
        if r.success:
            continue
        cfg = r.expectation_config
        kwargs = dict(cfg.kwargs)
        res = dict(r.result or {})
        out.append(
            _json_safe(
                {
                    "column": _column_of(kwargs, res),
                    "rule": cfg.type,
                    "expected": {
                        k: v
                        for k, v in kwargs.items()
                        if k not in ("column", "batch_id", "result_format")
                    },
                    "observed": res.get("observed_value"),
                    "unexpected_count": res.get("unexpected_count"),
                    "unexpected_percent": res.get("unexpected_percent"),
                    "partial_unexpected_list": res.get("partial_unexpected_list"),
                    "error": _error_of(r.exception_info),
                    "note": cfg.notes if isinstance(cfg.notes, str) else " ".join(cfg.notes or []),
                    "risk": expectations.RISK_LABEL.get(str((cfg.meta or {}).get("risk")), ""),
                }
            )
        )
    return out


def _error_of(info: Any) -> str | None:
    """The first exception message; GX nests them per metric when a metric failed to compute."""
    if not isinstance(info, dict):
        return None
    if "raised_exception" in info:
        return str(info.get("exception_message")) if info.get("raised_exception") else None
    return next((e for e in map(_error_of, info.values()) if e), None)


def _column_of(kwargs: dict[str, Any], res: dict[str, Any]) -> str:
    if "column" in kwargs:
        return str(kwargs["column"])
    if "column_A" in kwargs:
        return f"{kwargs['column_A']} > {kwargs['column_B']}"
    if "column_list" in kwargs:  # a rule over whole rows, e.g. exact duplicates
        return f"(rows: {len(kwargs['column_list'])} columns)"
    # A table-level rule: name the columns it is about, where it says.
    mismatched = (res.get("details") or {}).get("mismatched") or {}
    names = [*mismatched.get("missing", []), *mismatched.get("unexpected", [])]
    return ", ".join(str(n) for n in names) if names else "(table)"


def _json_safe(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple | set):
        return [_json_safe(x) for x in v]
    if hasattr(v, "item") and callable(v.item):  # numpy scalars
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None  # NaN is not JSON; PostgreSQL's JSON rejects it
    if v is None or isinstance(v, bool | int | float | str):
        return v
    return str(v)


# -- the step --------------------------------------------------------------------------------


def load_frame(ws: Workspace, store: Store, batch: BatchRecord) -> pd.DataFrame:
    path = ws.resolve(batch.path)
    if not path.exists():
        from pipelines.ingest import checkout

        checkout(ws, store, batch.id)  # bring the bytes back from the DVC cache or remote
    return pd.read_parquet(path)


def validate_batch(
    ws: Workspace,
    store: Store,
    batch_id: str,
    *,
    policy: str,
    min_rows: int,
    max_rows: int,
) -> ValidationReport:
    """Validate one batch against its data set's suite and record the outcome in the store.

    Does not raise for a failing batch: the caller decides (the flow raises ValidationFailed
    with `report.summary()`, the CLI exits non-zero). Raises MlopsError when the data set has
    no suite or the policy is unknown.
    """
    if policy not in POLICIES:
        raise MlopsError(f"unknown validation policy {policy!r} (one of {', '.join(POLICIES)})")
    batch = store.get_batch(batch_id)
    inferred = None
    if not suite_path(ws, batch.dataset).exists():
        # A new data set's first validation needs no separate `--init`: its first batch is
        # the reference (and is then validated against what it taught, like any other).
        first = store.list_batches(dataset=batch.dataset)[0]
        inferred = init_suite(ws, store, first.id)
    frame = load_frame(ws, store, batch)
    run = run_suite(
        ws, batch.dataset, frame, min_rows=min_rows, max_rows=max_rows, run_name=batch.id
    )
    outcome = (
        "passed"
        if run.success
        else {"block": "failed", "quarantine": "quarantined", "warn": "warned"}[policy]
    )

    src = ws.resolve(batch.path)
    quarantined = src.is_relative_to(ws.quarantine_dir)
    dst = None
    if outcome == "quarantined" and not quarantined:
        dst = ws.quarantine_dir / src.name
    elif outcome in TRAINABLE_OUTCOMES and quarantined:
        dst = ws.raw_dir / src.name  # a fixed suite releases the batch from quarantine
    if dst is not None:
        versioning.move(ws, src, dst)
    try:
        store.add_validation(
            batch_id=batch.id,
            suite=batch.dataset,
            success=run.success,
            policy=policy,
            outcome=outcome,
            evaluated=run.evaluated,
            failures=run.failures,
            docs_path=ws.relative(run.docs_path) if run.docs_path else None,
            batch_path=ws.relative(dst) if dst is not None else None,
        )
    except BaseException:
        if dst is not None:  # keep the file where the store says it is
            versioning.move(ws, dst, src)
        raise
    return ValidationReport(
        batch_id=batch.id,
        dataset=batch.dataset,
        suite=batch.dataset,
        policy=policy,
        outcome=outcome,
        success=run.success,
        evaluated=run.evaluated,
        failures=run.failures,
        docs_path=run.docs_path,
        batch_path=ws.relative(dst) if dst is not None else batch.path,
        suite_inferred=inferred,
    )


def init_suite(
    ws: Workspace, store: Store, batch_id: str, *, force: bool = False
) -> SuiteInference:
    """Infer the batch's data set suite from it (the reference batch) and save it."""
    from pipelines.sources import DatasetSpec

    batch = store.get_batch(batch_id)
    path = suite_path(ws, batch.dataset)
    if path.exists() and not force:
        raise MlopsError(
            f"data set {batch.dataset!r} already has a suite at {ws.relative(path)}: edit it, "
            f"or pass --force to replace it with one inferred from {batch.id}"
        )
    spec = DatasetSpec.from_dict(store.get_dataset_spec(batch.dataset))
    frame = load_frame(ws, store, batch)
    if frame.empty:
        raise MlopsError(f"batch {batch.id} has no rows: it cannot serve as a reference")
    suite = expectations.build_suite(batch.dataset, expectations.infer_expectations(frame, spec))
    warning = expectations.reference_warning(len(frame))
    suite.meta["reference_batch"] = batch.id
    suite.meta["reference_rows"] = len(frame)
    if warning:
        suite.meta["warning"] = warning
    if not (ws.gx_dir / "great_expectations.yml").is_file():
        init_gx(ws)
    with gx_lock(ws):
        ctx = open_gx(ws)
        _save_suite(ctx, suite)
    return SuiteInference(batch.dataset, path, batch.id, len(frame), warning)


def require_trainable(store: Store, batch_ids: Iterable[str]) -> list[BatchRecord]:
    """The batches, if each one's latest validation passed or warned; else MlopsError."""
    out = []
    for batch_id in batch_ids:
        batch = store.get_batch(batch_id)
        latest = store.latest_validation(batch.id)
        if latest is None:
            raise MlopsError(
                f"batch {batch.id} cannot be used for training: it has not been validated "
                f"(status {batch.status}); run `mlops validate {batch.id}`"
            )
        if latest.outcome not in TRAINABLE_OUTCOMES:
            raise MlopsError(
                f"batch {batch.id} cannot be used for training: its latest validation "
                f"{latest.outcome} (status {batch.status}, {len(latest.failures)} failed "
                f"expectation(s); see `mlops data show {batch.id}`)"
            )
        out.append(batch)
    return out
