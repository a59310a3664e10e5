"""The `mlops` command line: one entry point for ML engineers, release managers and ops teams."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.text import Text

from mlops.cli import compress, data, loop, monitor, run, serve, train, validate
from mlops.cli.common import err_console
from mlops.errors import MlopsError

app = typer.Typer(
    name="mlops",
    help="The MLOps lifecycle: ingest, validate, train, evaluate, compress, serve, monitor.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(
    ctx: typer.Context,
    workspace: Path = typer.Option(
        None, "-w", "--workspace", help="Workspace folder (default: the current directory)."
    ),
) -> None:
    ctx.obj = {"workspace": workspace}


app.command()(data.init)
app.command()(data.ingest)
app.add_typer(data.data_app, name="data")
app.add_typer(data.db_app, name="db")
app.command()(train.train)
app.add_typer(train.models_app, name="models")
app.add_typer(train.stage_app, name="stage", hidden=True)
app.command()(validate.validate)
app.command()(run.run)
app.command()(compress.compress)
app.command()(train.status)
app.command()(serve.package)
app.command()(serve.serve)
app.command()(serve.promote)
app.command()(serve.rollout)
app.command("rollback")(train.models_rollback)
app.add_typer(serve.review_app, name="review")
app.add_typer(serve.predictions_app, name="predictions")
app.command()(monitor.monitor)
app.add_typer(monitor.drift_app, name="drift")
app.command()(monitor.feedback)
app.command()(monitor.ui)
app.command()(loop.server)
app.command()(loop.worker)
app.add_typer(loop.automations_app, name="automations")
app.add_typer(loop.schedule_app, name="schedule")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors become one line on stderr and a non-zero exit code."""
    import click

    try:
        # Without standalone mode, typer hands back a command's `typer.Exit(code)` as the result.
        code = app(args=argv, standalone_mode=False)
    except MlopsError as exc:
        # The message is plain text: column names like "Torque [Nm]" are not rich markup.
        err_console.print(Text.assemble(("error: ", "red"), str(exc)), soft_wrap=True)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return int(exc.exit_code or 0)
    except click.Abort:
        err_console.print("aborted")
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    return code if isinstance(code, int) else 0


def entrypoint() -> None:
    sys.exit(main())
