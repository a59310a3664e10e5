"""`mlops init`, `mlops ingest`, `mlops data ...` and `mlops db ...`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

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
    short_time,
    workspace,
)
from mlops.settings import redact_url

if TYPE_CHECKING:
    from mlops.params import IngestParams
    from pipelines.ingest import LoadedSource, SourceRequest

data_app = typer.Typer(help="Data sets and batches: list, show, restore.", no_args_is_help=True)
db_app = typer.Typer(help="The metadata store.", no_args_is_help=True)


def init(directory: Path = typer.Argument(..., help="Folder for the new workspace.")) -> None:
    """Create a workspace: git, DVC with a local remote, params.yaml, data folders, the store."""
    from pipelines.init import init_workspace

    ws = init_workspace(directory)
    console.print(f"[green]workspace ready[/] at {ws.root}")
    console.print(f"  state folder (MLOPS_HOME): {ws.home}")
    console.print(f"  metadata store: {redact_url(ws.database_url)}")
    console.print(f"  DVC remote: {ws.dvc_remote}")


def ingest(
    ctx: typer.Context,
    source: str = typer.Option(
        None, "--source", "-s", help="ai4i, csv:PATH or parquet:PATH (any readable path)."
    ),
    rows: int = typer.Option(None, "--rows", help="Rows to generate (ai4i)."),
    seed: int = typer.Option(None, "--seed", help="Random seed (ai4i)."),
    drift: str = typer.Option(None, "--drift", help="ai4i drift knobs, e.g. ambient_shift_k=5."),
    target: str = TargetOption,
    task: str = TaskOption,
    dataset: str = typer.Option(
        None,
        "--dataset",
        help="Data set to add the batch to or to start (default: the workspace's data set, "
        "else the file name).",
    ),
    positive_class: str = PositiveClassOption,
    sep: str = SepOption,
    decimal: str = DecimalOption,
    as_json: bool = JsonOption,
) -> None:
    """Ingest a batch: write it under data/raw/, version it with DVC, record it in the store."""
    from mlops.params import load_params
    from pipelines.ingest import ingest as run_ingest

    ws = workspace(ctx)
    request = source_request(
        load_params(ws.params_path).ingest,
        source=source,
        rows=rows,
        seed=seed,
        drift=drift,
        target=target,
        task=task,
        dataset=dataset,
        positive_class=positive_class,
        sep=sep,
        decimal=decimal,
    )
    with open_store(ws) as store:
        loaded = request.load(ws, store)
        if not as_json:
            print_loaded(loaded)
        result = run_ingest(ws, store, loaded)
    b = result.batch
    if as_json:
        print_json(
            {
                **b.to_dict(),
                "created": result.created,
                "inference": loaded.inference,
                "notes": list(loaded.notes),
                "spec": loaded.spec.to_dict(),
            }
        )
        return
    verb = "ingested" if result.created else "already ingested (same bytes)"
    console.print(f"[green]{verb}[/] batch [bold]{b.id}[/]  rows={b.rows}  dvc md5={b.dvc_md5}")
    console.print(f"  {b.path}  source={escape(b.source)}")


def source_request(p: IngestParams, *, source: str | None, **options: Any) -> SourceRequest:
    """The ingest request from CLI options; what is not given comes from params.yaml."""
    from pipelines.ingest import SourceRequest

    defaults = {"rows": p.rows, "seed": p.seed, "drift": p.drift}
    given = {k: v for k, v in options.items() if v is not None}
    return SourceRequest(source=source or p.source, **{**defaults, **given})


def print_loaded(loaded: LoadedSource) -> None:
    """How a source was read and where it goes: separator, data set, inferred task."""
    for note in loaded.notes:
        console.print(f"[cyan]note:[/] {escape(note)}", highlight=False)
    if loaded.inference:
        console.print(f"[yellow]inferred:[/] {escape(loaded.inference)}", highlight=False)
    spec = loaded.spec
    if spec.positive_class is not None and not loaded.joined:
        console.print(
            f"  positive class of '{escape(spec.target)}': {spec.positive_class!r} "
            "(--positive-class to choose another)",
            highlight=False,
        )


@data_app.command("sets")
def data_sets(ctx: typer.Context, as_json: bool = JsonOption) -> None:
    """List the workspace's data sets: task, target, positive class, batches."""
    ws = workspace(ctx)
    with open_store(ws) as store:
        datasets = store.list_datasets()
    if as_json:
        print_json([d.to_dict() for d in datasets])
        return
    print_table(
        f"{len(datasets)} data set(s)",
        ["data set", "task", "target", "positive class", "features", "batches", "last batch"],
        [
            [
                d.name,
                d.task,
                d.spec.get("target"),
                d.spec.get("positive_class"),
                len(d.spec.get("features", [])),
                d.batches,
                short_time(d.last_batch_at) if d.last_batch_at else "",
            ]
            for d in datasets
        ],
    )


@data_app.command("list")
def data_list(
    ctx: typer.Context,
    dataset: str = typer.Option(None, "--dataset", help="Only this data set."),
    as_json: bool = JsonOption,
) -> None:
    """List the ingested batches and their validation status."""
    ws = workspace(ctx)
    with open_store(ws) as store:
        batches = store.list_batches(dataset=dataset)
    if as_json:
        print_json([b.to_dict() for b in batches])
        return
    print_table(
        f"{len(batches)} batch(es)",
        ["batch", "dataset", "rows", "status", "dvc md5", "source", "created"],
        [
            [b.id, b.dataset, b.rows, b.status, b.dvc_md5, b.source, short_time(b.created_at)]
            for b in batches
        ],
    )


@data_app.command("show")
def data_show(ctx: typer.Context, batch: str, as_json: bool = JsonOption) -> None:
    """Show one batch with its validation history."""
    ws = workspace(ctx)
    with open_store(ws) as store:
        b = store.get_batch(batch)
        validations = store.list_validations(b.id)
    if as_json:
        print_json({**b.to_dict(), "validations": [v.to_dict() for v in validations]})
        return
    for key, value in b.to_dict().items():
        console.print(f"[bold]{key}[/]: {escape(str(value))}")
    for v in validations:
        console.print(
            f"validation {v.id}: {v.outcome} (policy {v.policy}), "
            f"{len(v.failures)} failed expectation(s), docs {v.docs_path}"
        )


@data_app.command("checkout")
def data_checkout(ctx: typer.Context, batch: str) -> None:
    """Restore a batch's exact bytes from the DVC cache or remote."""
    from pipelines.ingest import checkout

    ws = workspace(ctx)
    with open_store(ws) as store:
        b, _ = checkout(ws, store, batch)
    console.print(f"[green]restored[/] {b.path} (md5 {b.dvc_md5} verified)")


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Apply the store's migrations (also done automatically on first use)."""
    from mlops.settings import get_workspace
    from mlops.store import db

    root = (ctx.find_root().obj or {}).get("workspace")
    ws = get_workspace(root)
    engine = db.make_engine(ws.database_url)
    try:
        rev = db.upgrade(engine)
    finally:
        engine.dispose()
    console.print(f"[green]store at revision {rev}[/] ({redact_url(ws.database_url)})")
