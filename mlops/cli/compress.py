"""`mlops compress REF`: smaller, faster variants of a model version; the best one registered."""

from __future__ import annotations

import typer

from mlops.cli.common import JsonOption, console, err_console, open_store, print_json, workspace


def compress(
    ctx: typer.Context,
    ref: str = typer.Argument(
        None,
        help="Model version: NAME:VERSION, NAME@STAGE or an id (default: the newest trained "
        "version of the workspace's data set in staging or production).",
    ),
    dataset: str = typer.Option(
        None, "--dataset", help="Data set whose model to compress (when there are several)."
    ),
    overrides: list[str] = typer.Option(
        None, "--set", help="Override a parameter for this run only: compress.key=value."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Quantize, prune and distill a model version, measure every variant on its test split,
    and register the smallest x fastest one within compress.max_quality_drop as its child.

    Exits with code 3, registering nothing, when no variant stays within the tolerance.
    """
    from mlops.params import load_params
    from pipelines.compress import NoVariantPassed, compress_and_register, default_ref
    from pipelines.compress_report import report_table

    ws = workspace(ctx)
    params = load_params(ws.params_path, list(overrides or []))

    def progress(msg: str) -> None:
        if not as_json:
            err_console.print(f"[dim]{msg}[/]", highlight=False)

    with open_store(ws) as store:
        if ref is None:
            ref = default_ref(store, dataset)
        done = compress_and_register(
            ws, store, ref, params.compress, params.evaluate, progress=progress
        )
    child, report = done.child, done.report
    if done.reused:
        assert child is not None
        if as_json:
            print_json({"report": None, "registered": child.to_dict(), "reused": True})
        else:
            console.print(
                f"[yellow]reused[/] {child.ref} (stage {child.stage}): {ref} was already "
                "compressed with these compress params; nothing new registered",
                highlight=False,
            )
        return
    assert report is not None
    if as_json:
        print_json(
            {
                "report": report.to_dict(),
                "registered": child.to_dict() if child else None,
                "reused": False,
            }
        )
    else:
        console.print(report_table(report, width=console.width))
        console.print(f"table {report.csv_path}\nplot  {report.plot_path}", highlight=False)
    if child is None:
        p = report.parent
        raise NoVariantPassed(
            f"no variant of {ref} stays within the {report.primary_metric} tolerance "
            f"(parent {report.primary_metric} {p.primary}); nothing registered "
            f"(table: {report.csv_path})"
        )
    if not as_json:
        best = report.chosen_result
        assert best is not None
        console.print(
            f"[green]registered[/] [bold]{child.ref}[/] ({best.name}, runtime {child.runtime}) "
            f"as a child of {ref}: {best.reason}",
            highlight=False,
        )
        console.print(f"  gate: {child.stage}: {child.decision.get('reason')}", highlight=False)
