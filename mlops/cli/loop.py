"""The closed loop's commands: a Prefect server, a worker serving the loop's deployments, the
drift trigger, schedules."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import typer

from mlops.cli.common import console, workspace
from mlops.errors import MlopsError

automations_app = typer.Typer(help="The drift -> retrain trigger on the Prefect server.",
                              no_args_is_help=True)  # fmt: skip
SCHEDULABLE = ("retrain", "monitor")


def server(
    ctx: typer.Context,
    port: int = typer.Option(4200, "--port", help="Port for the API and the UI."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
) -> None:
    """Start a Prefect server (API and UI) for this workspace: SQLite under MLOPS_HOME, or
    PostgreSQL through PREFECT_API_DATABASE_CONNECTION_URL. Point workers and the monitor at it
    with PREFECT_API_URL=http://HOST:PORT/api."""
    ws = workspace(ctx)
    prefect = Path(sys.executable).parent / "prefect"
    print(
        f"Prefect UI: http://{host}:{port}  (PREFECT_API_URL=http://{host}:{port}/api)", flush=True
    )
    argv = [str(prefect), "server", "start", "--host", host, "--port", str(port)]
    os.execve(argv[0], argv, {**os.environ, "PREFECT_HOME": str(ws.prefect_home)})  # noqa: S606


def worker(ctx: typer.Context) -> None:
    """Serve the loop's deployments (retrain, monitor) from this process: runs asked for by
    the drift trigger, a schedule or the UI execute here. Needs PREFECT_API_URL."""
    from prefect import serve

    from flows.retrain import deployments
    from mlops.params import load_params

    ws = workspace(ctx)
    _require_api()
    loop = load_params(ws.params_path).loop
    items = deployments(ws.root, loop.cooldown_s, crons=_crons(loop))
    console.print(f"serving {', '.join(d.name for d in items)} for {ws.root} (Ctrl-C to stop)")
    serve(*items, print_starting_message=False)


@automations_app.command("install")
def automations_install(ctx: typer.Context) -> None:
    """Register (or update) the trigger that runs the retrain deployment on a drift alert the
    store decided should retrain; debounced by the trigger's `within` window (loop.cooldown_s)
    and the deployment's concurrency limit of one."""
    from flows.retrain import AUTOMATION
    from mlops.params import load_params

    ws = workspace(ctx)
    _require_api()
    loop = load_params(ws.params_path).loop
    created = asyncio.run(_install(ws.root, loop.cooldown_s))
    console.print(f"[green]{AUTOMATION}[/] {created}: mlops.drift.detected -> retrain")


async def _install(root: Path, cooldown_s: float) -> str:
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.orchestration import get_client
    from prefect.events.actions import RunDeployment
    from prefect.events.schemas.automations import EventTrigger, Posture

    from flows.retrain import AUTOMATION, RETRAIN_DEPLOYMENT, deployments, retrain

    async with get_client() as client:
        try:
            deployment = await client.read_deployment_by_name(
                f"{retrain.name}/{RETRAIN_DEPLOYMENT}"
            )
            deployment_id = deployment.id
        except Exception:  # not served yet: register it now, the worker picks it up
            deployment_id = await deployments(root, cooldown_s)[0].apply()
    automation = Automation(
        name=AUTOMATION,
        description="A drift alert the store decided should retrain starts the retrain flow",
        trigger=EventTrigger(
            expect={"mlops.drift.detected"},
            match={"prefect.resource.id": "mlops.model.*", "mlops.decision": "retrain"},
            posture=Posture.Reactive,
            threshold=1,
            # Half the store's cooldown: Prefect's debounce as documented, never dropping an
            # alert the store approved (those come at least a cooldown apart).
            within=timedelta(seconds=cooldown_s / 2),
        ),
        actions=[
            RunDeployment(
                source="selected",
                deployment_id=deployment_id,
                parameters={
                    "workspace": str(root),
                    "dataset": "{{ event.resource.name }}",
                    "drift_event": "{{ event.payload.drift_event.id }}",
                },
            )
        ],
    )
    existing = await Automation.aread(name=AUTOMATION) if await _exists(AUTOMATION) else None
    if existing is not None:
        automation.id = existing.id
        await automation.aupdate()
        return "updated"
    await automation.acreate()
    return "created"


async def _exists(name: str) -> bool:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return bool(await client.read_automations_by_name(name))


def schedule(
    ctx: typer.Context,
    what: str = typer.Argument(..., help="retrain or monitor"),
    cron: str = typer.Option(..., "--cron", help='A cron line, e.g. "0 3 * * *"; "" removes it.'),
) -> None:
    """Put the retrain (or monitor) deployment on a cron schedule: kept in params.yaml
    (loop.retrain_cron / loop.monitor_cron) and applied on the Prefect server now when one is
    configured; `mlops worker` serves it."""
    from mlops.params import load_params
    from pipelines.pipeline import write_overrides

    if what not in SCHEDULABLE:
        raise MlopsError(f"schedule {what!r}: one of {', '.join(SCHEDULABLE)}")
    if cron:
        from datetime import datetime

        from cronsim import CronSim, CronSimError

        try:
            CronSim(cron, datetime.now())
        except CronSimError:
            raise MlopsError(f"--cron {cron!r} is not a cron line (e.g. '0 3 * * *')") from None
    ws = workspace(ctx)
    write_overrides(ws, {"loop": {f"{what}_cron": cron}})
    loop = load_params(ws.params_path).loop
    if os.environ.get("PREFECT_API_URL"):
        from flows.retrain import deployments

        chosen = [d for d in deployments(ws.root, loop.cooldown_s, crons=_crons(loop))
                  if d.name == what]  # fmt: skip
        chosen[0].apply()  # Prefect runs it synchronously outside an event loop
        console.print(f"[green]{what}[/] scheduled {cron!r} on {os.environ['PREFECT_API_URL']}")
    else:
        console.print(
            f"[green]{what}[/] scheduled {cron!r} in params.yaml; `mlops worker` applies it"
        )


def _crons(loop: Any) -> dict[str, str]:
    return {"retrain": loop.retrain_cron, "monitor": loop.monitor_cron}


def _require_api() -> None:
    if not os.environ.get("PREFECT_API_URL"):
        raise MlopsError(
            "PREFECT_API_URL is not set: start a server (`mlops server`) and export "
            "PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
