"""`mlops validate`: check a batch against its data set's expectation suite."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from mlops.cli.common import JsonOption, console, open_store, print_json, workspace
from mlops.errors import MlopsError, ValidationFailed

MAX_SHOWN = 5  # unexpected values shown per failure in the table


def validate(
    ctx: typer.Context,
    batch: str = typer.Argument(..., help="Batch id (or a unique prefix), see `mlops data list`."),
    policy: str = typer.Option(
        None, "--policy", help="block | quarantine | warn (default: params.yaml validate.policy)."
    ),
    init: bool = typer.Option(
        False, "--init", help="Infer the data set's suite from this batch instead of validating."
    ),
    force: bool = typer.Option(False, "--force", help="With --init: replace an existing suite."),
    as_json: bool = JsonOption,
) -> None:
    """Validate a batch with Great Expectations; exits non-zero when the batch is blocked.

    Runs the data set's suite (gx/expectations/<dataset>.json) in a GX checkpoint, builds the
    Data Docs, records the result in the store and applies the policy: block (status failed),
    quarantine (file moved to data/quarantine/) or warn (recorded, let through).
    """
    from mlops.params import load_params
    from pipelines.validate import init_suite, validate_batch

    ws = workspace(ctx)
    params = load_params(ws.params_path).validate_
    with open_store(ws) as store:
        if init:
            path = init_suite(ws, store, batch, force=force)
            record = store.get_batch(batch)
            if as_json:
                print_json({"suite": record.dataset, "path": ws.relative(path), "batch": record.id})
                return
            console.print(
                f"[green]wrote suite[/] {ws.relative(path)} for data set {record.dataset!r} "
                f"from batch {record.id}; review it, then run `mlops validate {record.id}`"
            )
            return
        if force:
            raise MlopsError("--force only applies with --init")
        report = validate_batch(
            ws,
            store,
            batch,
            policy=policy or params.policy,
            min_rows=params.min_rows,
            max_rows=params.max_rows,
        )
    if as_json:
        print_json(report.to_dict())
    else:
        _print_report(report)
    if report.blocked:
        raise ValidationFailed(report.summary())


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
