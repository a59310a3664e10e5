"""`mlops run`: the whole lifecycle as one Prefect flow run."""

from __future__ import annotations

from typing import Any

import typer

from mlops.cli.common import (
    DecimalOption,
    JsonOption,
    PositiveClassOption,
    SepOption,
    TargetOption,
    TaskOption,
    console,
    open_store,
    print_json,
    print_table,
    workspace,
)
from mlops.errors import MlopsError
from mlops.settings import Workspace


def run(
    ctx: typer.Context,
    source: str = typer.Option(
        None,
        "--source",
        "-s",
        help="ai4i, csv:PATH or parquet:PATH to ingest first (default: the workspace's data "
        "set's newest batch; the built-in source in an empty workspace).",
    ),
    target: str = TargetOption,
    task: str = TaskOption,
    dataset: str = typer.Option(
        None, "--dataset", help="Data set to ingest into or run on (when there are several)."
    ),
    positive_class: str = PositiveClassOption,
    sep: str = SepOption,
    decimal: str = DecimalOption,
    overrides: list[str] = typer.Option(
        None, "--set", help="Override a parameter for this run: section.key=value."
    ),
    executor: str = typer.Option(
        None,
        "--executor",
        metavar="dask[=ADDRESS]",
        help="Where fan-out tasks run (batches waiting for validation, train.search candidates): "
        "default = Prefect's threads; dask = a local Dask cluster, a process per core; "
        "dask=tcp://HOST:8786 = a running Dask scheduler.",
    ),
    as_json: bool = JsonOption,
) -> None:
    """Run the lifecycle flow (ingest -> validate -> train -> evaluate -> compress) with Prefect.

    Every option is checked, and a source file read, before the Prefect server starts: a bad
    option is a one-line error, not a flow run that fails. (The flow reads the file again.)
    """
    from flows.executors import Executor
    from mlops.cli.data import print_loaded, source_request
    from mlops.params import load_params
    from pipelines.datasets import has_data, resolve_dataset
    from pipelines.ingest import plan_request

    ws = workspace(ctx)  # configures PREFECT_HOME etc. before Prefect is imported
    overrides = list(overrides or [])
    params = load_params(ws.params_path, overrides)
    Executor.parse(executor)  # a bad value is one line, before anything starts
    file_options = {
        "--target": target,
        "--task": task,
        "--positive-class": positive_class,
        "--sep": sep,
        "--decimal": decimal,
    }
    given = [k for k, v in file_options.items() if v is not None]
    if source is None and given:
        raise MlopsError(f"{', '.join(given)} describe a source: give it with --source")
    request = None
    if source is not None:
        request = source_request(
            params.ingest,
            source=source,
            target=target,
            task=task,
            dataset=dataset,
            positive_class=positive_class,
            sep=sep,
            decimal=decimal,
        )
    request = plan_request(params.ingest, overrides, request)
    with open_store(ws) as store:
        if request is not None:
            loaded = request.load(ws, store)  # the whole check: file, separator, target, task
            if not as_json:
                print_loaded(loaded)
        elif dataset is not None or has_data(store):
            resolve_dataset(store, dataset)  # unknown or ambiguous: say so now

    from flows.lifecycle import run_lifecycle

    result = run_lifecycle(ws.root, overrides, request=request, dataset=dataset, executor=executor)
    if as_json:
        print_json(result.steps)
        return
    console.rule("lifecycle finished")
    console.print(
        f"data set [bold]{result.dataset}[/]  batch [bold]{result.batch_id}[/]  "
        f"dvc md5 [bold]{result.dvc_md5}[/]  task runner {result.task_runner}"
    )
    print_table(
        "steps",
        ["step", "result"],
        [
            [name, "\n".join(f"{k}: {v}" for k, v in value.items())]
            for name, value in result.steps.items()
        ],
    )
    _print_summary(ws, result.dataset, result.steps)


def _print_summary(ws: Workspace, name: str, steps: dict[str, Any]) -> None:
    """Where the loop left things: production and its metrics, the compression chosen, how to
    serve it, the drift report, the retrain it caused, and the dashboards."""
    from mlops.params import load_params

    serve = load_params(ws.params_path).serve
    lines: list[tuple[str, str]] = []
    with open_store(ws) as store:
        production = store.production_model(name)
        versions = store.list_models(name)
        latest = max(versions, key=lambda m: m.id) if versions else None
        reports = store.list_drift_reports(name)
        events = store.list_drift_events(name)
        parent = (
            store.get_model(production.parent_id)
            if production is not None and production.parent_id is not None
            else None
        )
    if production is None:
        lines.append(("production", f"none yet for {name}: nothing to serve"))
        if latest is not None and latest.decision.get("reason"):
            lines.append(("gate", f"{latest.ref} {latest.stage}: {latest.decision['reason']}"))
        nxt = latest.decision.get("next") if latest is not None else None
        lines.append(("next", str(nxt or "`mlops models list` shows every version and why")))
    else:
        metric = production.metrics.get("primary_metric")
        value = production.metrics.get(metric) if isinstance(metric, str) else None
        shown = f"{metric} {value:.4f}" if isinstance(value, float) else "no metric recorded"
        lines.append(("production", f"{production.ref} ({production.runtime}): {shown} on test"))
        if production.decision.get("reason"):
            lines.append(("gate", str(production.decision["reason"])))
        method = production.method.get("method")
        lines.append(
            (
                "compression",
                f"{method} of {parent.ref}" if method and parent else "none (the trained model)",
            )
        )
        lines.append(
            (
                "serve it",
                f"`mlops serve` -> http://127.0.0.1:{serve.port}/predict (OpenAPI page: /docs)",
            )
        )
    if reports:
        r = reports[-1]
        columns = (r.details or {}).get("columns", [])
        moved = ", ".join(c["column"] for c in columns if c.get("drifted"))
        lines.append(
            (
                "drift report",
                f"#{r.id} on {r.rows} served rows, drift share {r.drift_share:.2f}"
                + (f" ({moved})" if moved else "")
                + (f": {ws.home / r.path}" if r.path else ""),
            )
        )
    if events:
        decided = ", ".join(f"#{e.id} {e.decision}" for e in events[-3:])
        lines.append(("drift events", f"{decided} (all: `mlops drift events`)"))
    retrain = steps.get("retrain")
    if retrain:  # the gate's numbers are above (production) or in the steps table
        keys = ("model", "compressed", "rollout", "traffic", "skipped")
        lines.append(
            (
                "retrain",
                f"for drift event #{retrain.get('drift_event')}: "
                + "; ".join(f"{k} {retrain[k]}" for k in keys if retrain.get(k)),
            )
        )
    lines.append(("dashboards", "`mlops ui` (Evidently: drift and quality reports)"))
    lines.append(("", "`mlops server` (the Prefect UI with these runs, http://127.0.0.1:4200)"))
    console.rule("summary")
    for label, text in lines:
        console.print(f"[bold]{label:>13}[/]  {text}" if label else f"{'':>13}  {text}")
