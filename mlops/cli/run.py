"""`mlops run`: the whole lifecycle as one Prefect flow run."""

from __future__ import annotations

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
