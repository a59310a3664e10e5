"""The closed loop's commands: a Prefect server, a worker serving the loop's deployments, the
drift trigger, schedules."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import typer
from rich.text import Text

from mlops.cli.common import JsonOption, console, print_json, print_table, short_time, workspace
from mlops.errors import MlopsError
from mlops.settings import Workspace

automations_app = typer.Typer(help="The drift -> retrain trigger on the Prefect server.",
                              no_args_is_help=True)  # fmt: skip


def server(
    ctx: typer.Context,
    port: int = typer.Option(4200, "--port", help="Port for the API and the UI."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
) -> None:
    """Start a Prefect server (API and UI) for this workspace: SQLite under MLOPS_HOME, or
    PostgreSQL through PREFECT_API_DATABASE_CONNECTION_URL. Point workers and the monitor at it
    with PREFECT_API_URL=http://HOST:PORT/api. Its output is also kept in MLOPS_HOME/logs/
    (`mlops schedule list` reads the scheduler's errors there)."""
    import signal
    import subprocess

    ws = workspace(ctx)
    prefect = Path(sys.executable).parent / "prefect"
    log_path = server_log(ws)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if log_path.exists():  # the previous server's output, one generation back
        log_path.replace(log_path.with_suffix(".log.1"))
    print(
        f"Prefect UI: http://{host}:{port}  (PREFECT_API_URL=http://{host}:{port}/api; "
        f"log: {log_path})",
        flush=True,
    )
    argv = [str(prefect), "server", "start", "--host", host, "--port", str(port)]
    # Unbuffered: the server's lines reach the terminal and the log as they happen.
    env = {**os.environ, "PREFECT_HOME": str(ws.prefect_home), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def _forward(signum: int, _frame: Any) -> None:  # the server stops with this command
        proc.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _forward)
    assert proc.stdout is not None
    with log_path.open("wb") as log:
        try:
            for line in proc.stdout:
                sys.stdout.buffer.write(line)
                sys.stdout.flush()
                log.write(line)
                log.flush()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
        code = proc.wait()
    raise typer.Exit(0 if code in (0, -signal.SIGINT, -signal.SIGTERM) else code)


def worker(ctx: typer.Context) -> None:
    """Serve the loop's deployments (retrain, monitor) from this process: runs asked for by
    the drift trigger, a schedule or the UI execute here. Needs PREFECT_API_URL."""
    from prefect import serve

    from flows.retrain import deployments
    from mlops.params import load_params

    ws = workspace(ctx)
    _require_api()
    loop = load_params(ws.params_path).loop
    items = deployments(ws.root, loop.cooldown_s, schedules=schedule_specs(loop))
    console.print(f"serving {', '.join(d.name for d in items)} for {ws.root} (Ctrl-C to stop)")
    _follow_schedules(ws)
    serve(*items, print_starting_message=False)


def _follow_schedules(ws: Workspace, every_s: float = 5.0) -> None:
    """While the worker runs, keep the server's schedules what params.yaml says. The worker
    applies what it read at start-up; a `mlops schedule` run while it started (or a hand edit
    of params.yaml) would otherwise be overwritten by that, and never fire."""
    import threading
    import time

    from flows.retrain import deployment_names, deployments
    from flows.schedules import held_schedules
    from mlops.params import load_params

    names = deployment_names()

    def follow() -> None:
        while True:
            time.sleep(every_s)
            try:
                loop = load_params(ws.params_path).loop
                wanted = schedule_specs(loop)
                held = asyncio.run(held_schedules(names))
                stale = {
                    w for w, spec in wanted.items() if w in held and held[w] != spec.describe()
                }
                for d in deployments(ws.root, loop.cooldown_s, schedules=wanted):
                    if d.name in stale:
                        d.apply()
                        console.print(f"schedule of {d.name} set to {wanted[d.name].describe()}")
            except Exception as exc:  # a file mid-edit, a server restarting: the next round
                console.print(Text(f"schedules not checked ({type(exc).__name__}): {exc}"))

    threading.Thread(target=follow, name="follow-schedules", daemon=True).start()


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
    created = asyncio.run(_install(ws.root, loop.cooldown_s, schedule_specs(loop)))
    console.print(f"[green]{AUTOMATION}[/] {created}: mlops.drift.detected -> retrain")


async def _install(root: Path, cooldown_s: float, schedules: dict[str, Any]) -> str:
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
            deployment_id = await deployments(root, cooldown_s, schedules=schedules)[0].apply()
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


schedule_app = typer.Typer(
    help="Schedules of the loop's deployments (retrain, monitor): set them, and see whether "
    "they fire.",
    no_args_is_help=True,
)
CronOption = typer.Option(None, "--cron", help='A cron line in UTC, e.g. "0 3 * * *".')
EveryOption = typer.Option(None, "--every", help="An interval: 30s, 15m, 6h, 1d.")
OffOption = typer.Option(False, "--off", help="Remove the schedule.")


def _schedule_command(what: str, does: str) -> None:
    def command(
        ctx: typer.Context, cron: str = CronOption, every: str = EveryOption, off: bool = OffOption
    ) -> None:
        _set_schedule(ctx, what, cron, every, off)

    command.__doc__ = (
        f"{does} on a schedule (a cron line or an interval): kept in params.yaml "
        f"(loop.{what}_cron / loop.{what}_every_s) and applied on the Prefect server now when "
        "PREFECT_API_URL is set; `mlops worker` runs it."
    )
    schedule_app.command(what)(command)


_schedule_command("retrain", "Retrain on the newest validated data")
_schedule_command("monitor", "Monitor served traffic")


def _set_schedule(
    ctx: typer.Context, what: str, cron: str | None, every: str | None, off: bool
) -> None:
    from flows.schedules import check_cron, parse_every
    from mlops.params import load_params
    from pipelines.pipeline import write_overrides

    given = [name for name, v in (("--cron", cron), ("--every", every), ("--off", off)) if v]
    if cron == "":  # `--cron ""` removes the schedule, as it always has
        given, off = ["--off"], True
    if len(given) != 1:
        raise MlopsError(f"schedule {what}: give one of --cron, --every or --off")
    every_s = 0.0
    try:
        if cron:
            check_cron(cron)
        if every:
            every_s = parse_every(every)
    except ValueError as exc:
        raise MlopsError(f"{given[0]} {exc}") from None
    ws = workspace(ctx)
    seconds: int | float = int(every_s) if every_s.is_integer() else every_s
    change = {f"{what}_cron": cron or "", f"{what}_every_s": seconds}
    loop = load_params(ws.params_path).loop
    loop = type(loop).model_validate({**loop.model_dump(), **change})
    specs = schedule_specs(loop)
    said = "removed" if off else f"scheduled {specs[what].describe()}"
    where = "in params.yaml; `mlops worker` applies it"
    if os.environ.get("PREFECT_API_URL"):
        from flows.retrain import deployments

        (chosen,) = [d for d in deployments(ws.root, loop.cooldown_s, schedules=specs)
                     if d.name == what]  # fmt: skip
        # On the server first: one that does not answer leaves params.yaml as it was. A worker
        # starting at the same moment writes the same deployment: a conflict is worth a retry.
        _on_server(chosen.apply, retries=2)  # Prefect runs it synchronously outside a loop
        where = (
            f"on {os.environ['PREFECT_API_URL']} and in params.yaml; "
            "`mlops schedule list` shows whether it fires"
        )
    write_overrides(ws, {"loop": change})
    console.print(f"[green]{what}[/] {said} {where}")


@schedule_app.command("list")
def schedule_list(
    ctx: typer.Context,
    as_json: bool = JsonOption,
    check: bool = typer.Option(
        False, "--check", help="Exit 1 when a schedule is not firing or its last run failed."
    ),
) -> None:
    """Each schedule, the next run, the last scheduled run and its outcome, and whether the
    schedule fires: a run due more than loop.schedule_grace_s ago that was never created, or
    that no worker started, is reported as not firing (with the server's error when its log
    has one)."""
    ws = workspace(ctx)
    health = schedule_health(ws)
    if as_json:
        print_json([h.to_dict() for h in health])
    else:
        print_schedules(health)
    if check and any(h.status in ("not firing", "failing") for h in health):
        raise typer.Exit(1)


def schedule_health(ws: Workspace) -> list[Any]:
    """The schedules' health from the server PREFECT_API_URL names; without one, what
    params.yaml asks, marked as unknown."""
    from flows.retrain import deployment_names
    from flows.schedules import ScheduleHealth, read_health
    from mlops.params import load_params

    loop = load_params(ws.params_path).loop
    wanted = schedule_specs(loop)
    names = deployment_names()
    if not os.environ.get("PREFECT_API_URL"):
        return [
            ScheduleHealth(
                what=what, deployment=names[what], schedule=spec.describe(),
                status="unknown" if spec.on else "off",
                reason="PREFECT_API_URL is not set: no server to ask whether it fires"
                if spec.on else "no schedule",
            )
            for what, spec in wanted.items()
        ]  # fmt: skip
    return list(
        _on_server(
            lambda: asyncio.run(
                read_health(names, wanted, grace_s=loop.schedule_grace_s,
                            server_log=server_log(ws))
            )
        )
    )  # fmt: skip


def print_schedules(health: list[Any]) -> None:
    """A table of the schedules, then why each is in its state (a line each: the table stays
    readable in 80 columns)."""
    rows = []
    for h in health:
        last = h.last_run
        rows.append(
            [
                h.what,
                h.schedule + (f" (params.yaml: {h.in_params})" if h.in_params else ""),
                h.status,
                short_time(h.next_run) if h.next_run else "-",
                f"{short_time(last.expected_start)} {last.state_name}" if last else "-",
            ]
        )
    print_table(
        "schedules (times in UTC)",
        ["deployment", "schedule", "status", "next run", "last scheduled run"],
        rows,
    )
    for h in health:
        if h.status != "off":
            console.print(Text(f"{h.what}: {h.status}: {h.reason}"))


def schedule_specs(loop: Any) -> dict[str, Any]:
    from flows.schedules import specs

    return specs(loop)


def server_log(ws: Workspace) -> Path:
    """Where `mlops server` keeps the Prefect server's output (the scheduler's errors)."""
    return ws.logs_dir / "prefect-server.log"


def _on_server(call: Any, retries: int = 0) -> Any:
    """`call()` against PREFECT_API_URL, again up to `retries` times a second apart when the
    server answers a conflict or a server error; a server that does not answer is one line."""
    import time

    import httpx

    try:
        for _ in range(retries):
            try:
                return call()
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 409 and exc.response.status_code < 500:
                    raise
                time.sleep(1.0)
        return call()
    except httpx.HTTPStatusError as exc:  # it answered, and refused
        body = exc.response.text.strip().replace("\n", " ")[:300]
        raise MlopsError(
            f"the Prefect server at {os.environ.get('PREFECT_API_URL')} answered "
            f"{exc.response.status_code}: {body}"
        ) from None
    except (httpx.HTTPError, OSError) as exc:
        raise MlopsError(
            f"the Prefect server at {os.environ.get('PREFECT_API_URL')} did not answer "
            f"({type(exc).__name__}): start it with `mlops server`"
        ) from None


def _require_api() -> None:
    if not os.environ.get("PREFECT_API_URL"):
        raise MlopsError(
            "PREFECT_API_URL is not set: start a server (`mlops server`) and export "
            "PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
