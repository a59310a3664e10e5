"""`mlops init`, `mlops ingest`, `mlops data ...` and `mlops db ...`."""

from __future__ import annotations

from pathlib import Path

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
from mlops.settings import redact_url

data_app = typer.Typer(help="Data batches: list, show, restore.", no_args_is_help=True)
db_app = typer.Typer(help="The metadata store.", no_args_is_help=True)


def init(directory: Path = typer.Argument(..., help="Folder for the new workspace.")) -> None:
    """Create a workspace: git, DVC with a local remote, params.yaml, data folders, the store."""
    from mlops.workspace import init_workspace

    ws = init_workspace(directory)
    console.print(f"[green]workspace ready[/] at {ws.root}")
    console.print(f"  state folder (MLOPS_HOME): {ws.home}")
    console.print(f"  metadata store: {redact_url(ws.database_url)}")
    console.print(f"  DVC remote: {ws.dvc_remote}")


def ingest(
    ctx: typer.Context,
    source: str = typer.Option(None, "--source", "-s", help="ai4i, csv:PATH or parquet:PATH."),
    rows: int = typer.Option(None, "--rows", help="Rows to generate (ai4i)."),
    seed: int = typer.Option(None, "--seed", help="Random seed (ai4i)."),
    drift: str = typer.Option(None, "--drift", help="ai4i drift knobs, e.g. ambient_shift_k=5."),
    target: str = typer.Option(None, "--target", help="Label column (csv/parquet)."),
    task: str = typer.Option(None, "--task", help="classification or regression (csv/parquet)."),
    dataset: str = typer.Option(None, "--dataset", help="Data set name (default: file name)."),
    as_json: bool = JsonOption,
) -> None:
    """Ingest a batch: write it under data/raw/, version it with DVC, record it in the store."""
    from mlops.params import load_params
    from pipelines.ingest import ingest as run_ingest
    from pipelines.ingest import load_source

    ws = workspace(ctx)
    p = load_params(ws.params_path).ingest
    loaded = load_source(
        ws,
        source if source is not None else p.source,
        rows=rows if rows is not None else p.rows,
        seed=seed if seed is not None else p.seed,
        drift=drift if drift is not None else p.drift,
        target=target,
        task=task,
        dataset=dataset,
    )
    if loaded.inference and not as_json:
        console.print(f"[yellow]inferred:[/] {escape(loaded.inference)}")
    with open_store(ws) as store:
        result = run_ingest(ws, store, loaded)
    b = result.batch
    if as_json:
        print_json({**b.to_dict(), "created": result.created, "inference": loaded.inference})
        return
    verb = "ingested" if result.created else "already ingested (same bytes)"
    console.print(f"[green]{verb}[/] batch [bold]{b.id}[/]  rows={b.rows}  dvc md5={b.dvc_md5}")
    console.print(f"  {b.path}  source={escape(b.source)}")


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
