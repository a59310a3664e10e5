"""`mlops run`: the whole lifecycle as one Prefect flow run."""

from __future__ import annotations

import typer

from mlops.cli.common import JsonOption, console, print_json, print_table, workspace


def run(
    ctx: typer.Context,
    overrides: list[str] = typer.Option(
        None, "--set", help="Override a parameter for this run: section.key=value."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Run the lifecycle flow (ingest -> validate -> train -> evaluate -> compress) with Prefect."""
    ws = workspace(ctx)  # configures PREFECT_HOME etc. before Prefect is imported
    from flows.lifecycle import run_lifecycle

    result = run_lifecycle(ws.root, overrides or [])
    if as_json:
        print_json(result.steps)
        return
    console.rule("lifecycle finished")
    console.print(f"batch [bold]{result.batch_id}[/]  dvc md5 [bold]{result.dvc_md5}[/]")
    print_table(
        "steps",
        ["step", "result"],
        [
            [name, "\n".join(f"{k}: {v}" for k, v in value.items())]
            for name, value in result.steps.items()
        ],
    )
