"""Ops commands: monitor served traffic, review drift reports, feed labels back, open the UI."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from mlops.cli.common import (
    JsonOption,
    console,
    open_store,
    print_json,
    print_table,
    short_time,
    workspace,
)
from mlops.errors import MlopsError
from mlops.store import DriftRecord

drift_app = typer.Typer(help="Drift reports on served traffic.", no_args_is_help=True)


def monitor(
    ctx: typer.Context,
    since: str = typer.Option(None, "--since", help="Window: 30m, 6h, 2d, or an ISO time."),
    last: int = typer.Option(None, "--last", help="Window: the newest N served rows."),
    dataset: str = typer.Option(None, "--dataset", help="Model/data set (default: the only one)."),
    no_alert: bool = typer.Option(False, "--no-alert", help="Record, but send no alert."),
    as_json: bool = JsonOption,
) -> None:
    """Compare served traffic with the serving version's reference (Evidently): drift per
    column and of the prediction, quality estimated and realized; alerts when a threshold
    in params.yaml `monitor:` is crossed."""
    from mlops.params import load_params
    from pipelines.datasets import resolve_dataset
    from pipelines.monitor import monitor as run_monitor
    from pipelines.monitor import parse_since

    if since is not None and last is not None:
        raise MlopsError("give --since or --last, not both")
    if last is not None and last < 1:
        raise MlopsError(f"--last {last}: must be at least 1")
    ws = workspace(ctx)
    params = load_params(ws.params_path)
    with open_store(ws) as store:
        name = resolve_dataset(store, dataset)
        with console.status(f"monitoring {name}: Evidently report on served traffic"):
            result = run_monitor(
                ws,
                store,
                params,
                name=name,
                since=parse_since(since) if since else None,
                last=last,
                alert=not no_alert,
            )
    if as_json:
        print_json({**result.summary, "reasons": result.reasons, "alerts": result.alerts})
        return
    _print_report(result.report)
    console.print(f"report: {result.html}")
    for line in result.reasons:
        console.print(f"[red]alert[/] {escape(line)}")
    for sent in result.alerts:
        error = escape(str(sent.get("error")))
        state = "[green]sent[/]" if sent.get("ok") else f"[yellow]not sent[/] ({error})"
        console.print(f"  {sent['channel']}: {state}")


@drift_app.command("list")
def drift_list(
    ctx: typer.Context,
    dataset: str = typer.Option(None, "--dataset", help="Only this model/data set."),
    limit: int = typer.Option(20, "-n", "--limit", help="How many, newest last."),
    as_json: bool = JsonOption,
) -> None:
    """Monitor runs, newest last: window, rows, drift share, drifted columns, quality, alerts."""
    ws = workspace(ctx)
    with open_store(ws) as store:
        reports = store.list_drift_reports(dataset, limit=limit)
        versions = {m.id: m.ref for m in store.list_models()}
    if as_json:
        print_json([r.to_dict() for r in reports])
        return
    if not reports:
        console.print("no drift reports yet: run `mlops monitor` on served traffic")
        return
    print_table(
        f"{len(reports)} drift report(s)",
        ["id", "time", "version", "rows", "drift share", "drifted", "estimated", "realized",
         "alert"],
        [
            [r.id, short_time(r.created_at), versions.get(r.model_version_id or -1, ""), r.rows,
             r.drift_share, ", ".join(_drifted(r)), _metric(r, "estimated"),
             _metric(r, "realized"), "yes" if r.drifted else ""]
            for r in reports
        ],
    )  # fmt: skip


@drift_app.command("show")
def drift_show(
    ctx: typer.Context,
    report_id: int = typer.Argument(..., help="The report's id (`mlops drift list`)."),
    as_json: bool = JsonOption,
) -> None:
    """One report: every column's method, score and verdict, quality, alerts, the files."""
    ws = workspace(ctx)
    with open_store(ws) as store:
        r = store.get_drift_report(report_id)
    if as_json:
        print_json(r.to_dict())
        return
    _print_report(r)
    if r.path:
        console.print(f"report: {ws.home / r.path}")
    for item in r.alerts or []:
        if "reasons" in item:
            for line in item["reasons"]:
                console.print(f"[red]alert[/] {escape(line)}")
        else:
            console.print(f"  {item.get('channel')}: {'sent' if item.get('ok') else 'not sent'}")


@drift_app.command("events")
def drift_events(
    ctx: typer.Context,
    dataset: str = typer.Option(None, "--dataset", help="Only this model/data set."),
    as_json: bool = JsonOption,
) -> None:
    """Every drift alert and what it caused: a retrain (and the run that did it) or suppressed,
    and why (the cooldown, the cap)."""
    ws = workspace(ctx)
    with open_store(ws) as store:
        events = store.list_drift_events(dataset)
    if as_json:
        print_json([e.to_dict() for e in events])
        return
    if not events:
        console.print("no drift alerts yet")
        return
    print_table(
        f"{len(events)} drift alert(s)",
        ["id", "time", "model", "report", "decision", "flow run", "why"],
        [
            [e.id, short_time(e.created_at), e.model_name, e.drift_report_id, e.decision,
             e.flow_run_id or "", e.reason]
            for e in events
        ],
    )  # fmt: skip


def _drifted(r: DriftRecord) -> list[str]:
    return [c["column"] for c in r.details.get("columns", []) if c.get("drifted")]


def _metric(r: DriftRecord, which: str) -> str:
    metric = r.details.get("primary_metric") or {}
    value = metric.get("estimate" if which == "estimated" else "realized")
    if not isinstance(value, float):
        return ""
    unreliable = which == "estimated" and metric.get("reliable") is False
    return f"{value:.3f}" + (" (unreliable)" if unreliable else "")


def _print_report(r: DriftRecord) -> None:
    start, end = short_time(r.window_start), short_time(r.window_end)
    console.print(
        f"drift report {r.id}: {r.model_name} window {start} .. {end}, {r.rows} rows against "
        f"{r.details.get('reference', {}).get('rows', '?')} reference rows",
        markup=False,
    )
    rows: list[list[Any]] = [
        [c["column"], c["kind"], c["method"], c["score"], c["threshold"],
         "drifted" if c["drifted"] else ""]
        for c in r.details.get("columns", [])
    ]  # fmt: skip
    p = r.details.get("prediction")
    if p:
        rows.append(["(prediction)", p["kind"], p["method"], p["score"], p["threshold"],
                     "drifted" if p["drifted"] else ""])  # fmt: skip
    print_table(
        f"drift share {r.drift_share:.2f}",
        ["column", "kind", "method", "score", "threshold", "verdict"],
        rows,
    )
    metric = r.details.get("primary_metric") or {}
    if metric:
        estimate = _fmt(metric.get("estimate"))
        band = metric.get("band")
        if band:
            estimate += f" [{_fmt(band[0])}, {_fmt(band[1])}]"
        if metric.get("reliable") is False:
            estimate += " (unreliable)"
        console.print(
            f"{metric.get('name')}: reference {_fmt(metric.get('baseline'))}, estimated "
            f"{estimate}, realized {_fmt(metric.get('realized'))}",
            markup=False,
        )
    for reason in (r.estimated or {}).get("reasons", []):
        console.print(f"  estimate unreliable: {reason}", markup=False)
    if metric.get("no_estimate"):
        console.print(f"  no estimate: {metric['no_estimate']}", markup=False)


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "-"


def feedback(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="CSV or Parquet: request id and label per row."),
    dataset: str = typer.Option(None, "--dataset", help="Model/data set (default: the only one)."),
    request_column: str = typer.Option("request_id", "--request-column"),
    label_column: str = typer.Option("label", "--label-column"),
    record_column: str = typer.Option(
        "record", "--record-column", help="Record index in a request (absent: 0)."
    ),
    sep: str = typer.Option(None, "--sep", help="CSV separator (default: sniffed)."),
) -> None:
    """Ground truth for served predictions, joined by request id (and record index): the
    monitor computes realized quality from it."""
    from pipelines.feedback import read_feedback, store_feedback
    from pipelines.sources import parse_sep

    ws = workspace(ctx)
    from pipelines.datasets import resolve_dataset

    with open_store(ws) as store:
        name = resolve_dataset(store, dataset)
        rows = read_feedback(
            file,
            request_column=request_column,
            label_column=label_column,
            record_column=record_column,
            sep=parse_sep(sep),
        )
        done = store_feedback(ws, store, name, rows)
    console.print(
        f"[green]stored[/] {done.stored} label(s) for {name}; {done.matched} match served "
        f"records in the prediction log"
        + (f", {done.unmatched} do not (yet)" if done.unmatched else "")
    )


def ui(
    ctx: typer.Context,
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address (the UI has no login: keep it local)."
    ),
) -> None:
    """Open the monitoring dashboards: Evidently's UI on the workspace's monitor runs (one
    project per model: drift share, drifted columns, estimated and realized quality, rows)."""
    from monitoring.ui import start_ui

    ws = workspace(ctx)
    log = ws.logs_dir / "evidently-ui.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with console.status("starting the Evidently UI"):
        server = start_ui(ws.evidently_dir, host, port, log_path=log)
    # Stopped by a signal, this process takes the UI's with it (the `with` stops it).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with server:
        # Plain print, flushed: scripts (and the browser test) read the address from it.
        print(f"Evidently UI: {server.url}  (Ctrl-C to stop; log: {log})", flush=True)
        try:
            code = server.process.wait()
        except KeyboardInterrupt:
            return
    if code:
        raise MlopsError(f"ui: evidently ui stopped with code {code} (see {log})")
