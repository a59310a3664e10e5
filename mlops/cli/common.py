"""Shared CLI plumbing: the workspace from the global option, the store, tables and JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mlops.settings import Workspace
from mlops.store import Store

console = Console()
err_console = Console(stderr=True)

JsonOption = typer.Option(False, "--json", help="Print JSON for scripts instead of a table.")
# How to read a user's file and what it means: `mlops ingest` and `mlops run` take the same.
TargetOption = typer.Option(None, "--target", help="Label column (a new data set).")
TaskOption = typer.Option(None, "--task", help="classification or regression (a new data set).")
PositiveClassOption = typer.Option(
    None, "--positive-class", help="Label whose F1/PR-AUC are reported (default: minority)."
)
SepOption = typer.Option(
    None, "--sep", help="CSV separator: comma, semicolon, tab or pipe (default: sniffed)."
)
DecimalOption = typer.Option(None, "--decimal", help="Decimal mark of a CSV: '.' or ','.")


def workspace(ctx: typer.Context) -> Workspace:
    """The initialised workspace named by the global -w/--workspace option."""
    from mlops.workspace import open_workspace

    root = (ctx.find_root().obj or {}).get("workspace")
    return open_workspace(root)


def open_store(ws: Workspace) -> Store:
    """The workspace's store, for use as `with open_store(ws) as store:`."""
    return Store.open(ws.database_url)


def print_json(obj: Any) -> None:
    # Plain print, not rich: scripts parse this and must not get markup or wrapping.
    print(json.dumps(obj, indent=2, default=str))


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(title=title, show_lines=False)
    for i, col in enumerate(columns):
        # The first column is what people copy (a version, a batch id): it never wraps.
        table.add_column(col, overflow="fold", no_wrap=i == 0)
    for row in rows:
        table.add_row(*(_cell(v) for v in row))
    console.print(table)


def _cell(value: Any) -> Text:
    """A cell as plain text: a column named "Tool wear [min]" is data, not rich markup."""
    if value is None:
        return Text("")
    if isinstance(value, float):
        return Text(f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}")
    return Text(str(value))


def short_time(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if hasattr(value, "strftime") else str(value)
