"""`mlops validate`: check a batch against its data set's expectation suite."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from mlops.cli.common import (
    JsonOption,
    console,
    err_console,
    open_store,
    print_json,
    workspace,
)
from mlops.errors import MlopsError, ValidationFailed

MAX_SHOWN = 5  # unexpected values shown per failure in the table


def validate(
    ctx: typer.Context,
    batch: str = typer.Argument(
        None,
        help="Batch id (or a unique prefix), see `mlops data list`; default: every batch of the "
        "workspace's data set not validated yet (else its newest).",
    ),
    dataset: str = typer.Option(
        None, "--dataset", help="Data set whose batches to validate (when there are several)."
    ),
    policy: str = typer.Option(
        None, "--policy", help="block | quarantine | warn (default: params.yaml validate.policy)."
    ),
    init: bool = typer.Option(
        False, "--init", help="Infer the data set's suite from this batch instead of validating."
    ),
    force: bool = typer.Option(False, "--force", help="With --init: replace an existing suite."),
    as_json: bool = JsonOption,
) -> None:
    """Validate batches with Great Expectations; exits non-zero when a batch is blocked.

    Runs the data set's suite (gx/expectations/<dataset>.json) in a GX checkpoint, builds the
    Data Docs, records the result in the store and applies the policy: block (status failed),
    quarantine (file moved to data/quarantine/) or warn (recorded, let through). A data set
    with no suite yet gets one inferred from its first batch. With BATCH, --json prints one
    report; without, a list.
    """
    from mlops.params import load_params
    from pipelines.datasets import resolve_dataset
    from pipelines.validate import init_suite, validate_batch

    ws = workspace(ctx)
    params = load_params(ws.params_path).validate_
    if force and not init:
        raise MlopsError("--force only applies with --init")
    with open_store(ws) as store:
        if batch is not None:
            if dataset is not None and store.get_batch(batch).dataset != dataset:
                raise MlopsError(f"batch {batch} is not in data set {dataset!r}")
            batch_ids = [batch]
        else:
            name = resolve_dataset(store, dataset)
            batches = store.list_batches(dataset=name)
            if not batches:
                raise MlopsError(f"data set {name!r} has no batches: ingest one first")
            pending = [b.id for b in batches if b.status == "ingested"]
            # --init takes the first batch as the reference; validation, what is pending.
            batch_ids = [batches[0].id] if init else pending or [batches[-1].id]
        if init:
            inferred = init_suite(ws, store, batch_ids[0], force=force)
            if as_json:
                print_json({**inferred.to_dict(), "path": ws.relative(inferred.path)})
                return
            _print_inferred(ws.relative(inferred.path), inferred)
            console.print(f"review it, then run `mlops validate {inferred.reference_batch}`")
            return
        reports = []
        for batch_id in batch_ids:
            report = validate_batch(
                ws,
                store,
                batch_id,
                policy=policy or params.policy,
                min_rows=params.min_rows,
                max_rows=params.max_rows,
            )
            reports.append(report)
            if not as_json:
                if report.suite_inferred is not None:
                    _print_inferred(ws.relative(report.suite_inferred.path), report.suite_inferred)
                _print_report(report)
    if as_json:
        print_json(reports[0].to_dict() if batch is not None else [r.to_dict() for r in reports])
    blocked = [r for r in reports if r.blocked]
    if blocked:
        more = f" (+{len(blocked) - 1} more blocked batch(es))" if len(blocked) > 1 else ""
        raise ValidationFailed(blocked[0].summary() + more)


def _print_inferred(path: str, inferred: Any) -> None:
    console.print(
        f"[green]inferred suite[/] {path} for data set {inferred.dataset!r} from its first "
        f"batch {inferred.reference_batch} ({inferred.rows} rows)",
        highlight=False,
    )
    if inferred.warning:
        err_console.print(f"[yellow]warning:[/] {inferred.warning}", highlight=False)


def _print_report(report: Any) -> None:
    colour = {"passed": "green", "warned": "yellow"}.get(report.outcome, "red")
    console.print(
        f"[{colour}]{report.outcome}[/]: batch [bold]{report.batch_id}[/] against suite "
        f"{report.suite!r}, {report.evaluated - len(report.failures)}/{report.evaluated} "
        f"expectations met (policy {report.policy})",
        highlight=False,
    )
    if report.failures:
        table = Table(title=f"{len(report.failures)} failed expectation(s)")
        table.add_column("column", overflow="fold")
        table.add_column("rule (GX expectation)", no_wrap=True)
        table.add_column("found", overflow="fold")
        table.add_column("guards against", overflow="fold")
        for f in report.failures:
            table.add_row(f["column"], f["rule"], _found(f), f.get("risk") or f["note"])
        console.print(table)
    if report.outcome == "quarantined":
        console.print(f"moved to {report.batch_path} (DVC-tracked; `mlops data checkout` restores)")
    if report.docs_path:
        console.print(f"data docs: {report.docs_path}", highlight=False, soft_wrap=True)


def _found(f: dict[str, Any]) -> str:
    """What the batch showed: the error, the unexpected count with examples, or the value."""
    if f.get("error"):
        return f"error: {f['error']}"
    count = f.get("unexpected_count")
    if count is not None:
        pct = f.get("unexpected_percent")
        share = f" ({pct:.2g}%)" if isinstance(pct, int | float) else ""
        examples = ", ".join(repr(v) for v in (f.get("partial_unexpected_list") or [])[:MAX_SHOWN])
        return f"{count} unexpected{share}" + (f": {examples}" if examples else "")
    observed = f.get("observed")
    return "" if observed is None else f"observed {observed}"
