"""Schedules of the loop's deployments, and whether they fire: Prefect wiring only.

`mlops schedule retrain|monitor --cron/--every` keeps a schedule in params.yaml and puts it on
the server; `mlops schedule list` (and `mlops status`) reads back, per deployment, the schedule
the server holds, its next run, its last scheduled run and that run's outcome. A schedule fires
when each due time gets a run that a worker starts. Two ways it fails, both reported as
"not firing":
- the server's scheduler creates no run (as Prefect 3.8.8's did on SQLAlchemy 2.1: it failed
  every loop, the deployment still showed its cron line, and nothing ran);
- a run is created but nothing starts it (no `mlops worker` serving the deployment: one that
  died): it stays Scheduled, then Late;
- the deployment is paused: Prefect pauses what a worker served when the worker shuts down.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

SCHEDULABLE = ("retrain", "monitor")
# A run in one of these has been started by a worker (or ended); SCHEDULED and PENDING have not.
STARTED = ("RUNNING", "COMPLETED", "FAILED", "CRASHED", "CANCELLED", "CANCELLING", "PAUSED")
FAILED = ("FAILED", "CRASHED")


@dataclass(frozen=True)
class ScheduleSpec:
    """One deployment's schedule as params.yaml keeps it: a cron line, an interval, or off."""

    what: str
    cron: str = ""
    every_s: float = 0.0

    @property
    def on(self) -> bool:
        return bool(self.cron or self.every_s)

    def describe(self) -> str:
        if self.cron:
            return f"cron {self.cron}"
        return f"every {format_every(self.every_s)}" if self.every_s else "off"


def specs(loop: Any) -> dict[str, ScheduleSpec]:
    """The schedules in params.yaml's `loop:` section, per deployment."""
    return {
        what: ScheduleSpec(what, getattr(loop, f"{what}_cron"), getattr(loop, f"{what}_every_s"))
        for what in SCHEDULABLE
    }


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_every(text: str) -> float:
    """'30s', '15m', '6h', '1d' or plain seconds -> seconds; ValueError names what is wrong."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text.lower())
    if not m:
        raise ValueError(f"{text!r} is not an interval (e.g. 30s, 15m, 6h, 1d)")
    seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if seconds < 1:
        raise ValueError(f"{text!r}: an interval is at least one second")
    return seconds


def format_every(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def check_cron(cron: str) -> None:
    """ValueError when `cron` is not a cron line the scheduler can run."""
    from cronsim import CronSim, CronSimError

    try:
        CronSim(cron, datetime.now(UTC))
    except CronSimError:
        raise ValueError(f"{cron!r} is not a cron line (e.g. '0 3 * * *')") from None


@dataclass(frozen=True)
class Cadence:
    """When a schedule the server holds is due: a cron line in a time zone, or an interval
    from an anchor."""

    cron: str = ""
    timezone: str = "UTC"
    every_s: float = 0.0
    anchor: datetime | None = None

    def describe(self) -> str:
        if self.cron:
            return f"cron {self.cron}" + ("" if self.timezone == "UTC" else f" ({self.timezone})")
        return f"every {format_every(self.every_s)}"

    def previous(self, t: datetime) -> datetime | None:
        """The latest due time at or before `t` (None: none yet)."""
        if self.cron:
            from cronsim import CronSim

            return next(CronSim(self.cron, t.astimezone(ZoneInfo(self.timezone)), reverse=True))
        anchor = self.anchor or t
        if t < anchor:
            return None
        steps = (t - anchor).total_seconds() // self.every_s
        return anchor + timedelta(seconds=steps * self.every_s)

    def next(self, t: datetime) -> datetime:
        """The first due time after `t`."""
        if self.cron:
            from cronsim import CronSim

            return next(CronSim(self.cron, t.astimezone(ZoneInfo(self.timezone))))
        anchor = self.anchor or t
        if t < anchor:
            return anchor
        steps = (t - anchor).total_seconds() // self.every_s + 1
        return anchor + timedelta(seconds=steps * self.every_s)


@dataclass(frozen=True)
class RunInfo:
    """A flow run of a scheduled deployment, as the server reports it."""

    id: str
    name: str
    expected_start: datetime
    state_type: str  # SCHEDULED, PENDING, RUNNING, COMPLETED, FAILED, ...
    state_name: str  # Scheduled, Late, Running, Completed, ...
    auto_scheduled: bool
    end_time: datetime | None = None
    message: str = ""


@dataclass(frozen=True)
class ScheduleHealth:
    """One deployment's schedule and whether it fires: what `mlops schedule list` prints."""

    what: str
    deployment: str
    schedule: str  # "cron * * * * *", "every 15m", "off"
    status: str  # firing | failing | not firing | waiting | paused | off | not deployed
    reason: str
    next_run: datetime | None = None
    last_run: RunInfo | None = None
    worker_polled: datetime | None = None
    in_params: str = ""  # what params.yaml asks, when the server holds something else

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge(
    *,
    what: str,
    deployment: str,
    cadence: Cadence,
    active: bool,
    active_since: datetime,
    runs: Sequence[RunInfo],
    now: datetime,
    grace_s: float,
    worker_polled: datetime | None = None,
    server_error: str | None = None,
    deployment_paused: bool = False,
) -> ScheduleHealth:
    """Whether a schedule fires: the latest time it was due more than `grace_s` ago must have a
    run that a worker started. `runs` are the deployment's flow runs (any order)."""
    schedule = cadence.describe()
    auto = sorted((r for r in runs if r.auto_scheduled), key=lambda r: r.expected_start)
    upcoming = [r for r in auto if r.expected_start > now and r.state_type == "SCHEDULED"]
    next_run = upcoming[0].expected_start if upcoming else cadence.next(now)
    past = [r for r in auto if r.expected_start <= now]
    last = past[-1] if past else None

    def made(status: str, reason: str) -> ScheduleHealth:
        return ScheduleHealth(
            what=what, deployment=deployment, schedule=schedule, status=status, reason=reason,
            next_run=next_run, last_run=last, worker_polled=worker_polled,
        )  # fmt: skip

    if not active:
        return made("paused", "the schedule is paused")
    if deployment_paused:
        # Prefect pauses a served deployment when the process serving it shuts down, and
        # deletes its scheduled runs: nothing fires until a worker serves it again.
        return made(
            "not firing",
            "the deployment is paused: its worker stopped (Prefect pauses what a stopped "
            "`mlops worker` served); start `mlops worker`",
        )
    due = cadence.previous(now - timedelta(seconds=grace_s))
    if due is None or due < active_since:
        return made("waiting", f"first run due {_when(next_run)}")
    # Due long enough ago: a run for that time (or a later one) must exist and have started.
    for_due = [r for r in past if r.expected_start >= due - timedelta(seconds=1)]
    if not for_due:
        reason = f"no run was created for {_when(due)}: the server's scheduler is not scheduling"
        if server_error:
            reason += f"; the server's log: {server_error}"
        return made("not firing", reason)
    waiting = [r for r in for_due if r.state_type not in STARTED]
    if waiting and len(waiting) == len(for_due):
        late = waiting[0]
        seen = (
            f"last polled {_ago(now, worker_polled)}" if worker_polled else "never polled"
        )  # fmt: skip
        return made(
            "not firing",
            f"the run due {_when(late.expected_start)} has not started ({late.state_name}): "
            f"no worker is serving this deployment ({seen}); start `mlops worker`",
        )
    assert last is not None  # for_due is a subset of past
    if last.state_type in FAILED:
        message = f": {last.message}" if last.message else ""
        return made("failing", f"the last scheduled run {last.state_name}{message}")
    return made("firing", f"the last scheduled run is {last.state_name}")


def _when(t: datetime | None) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if t else "-"


def _ago(now: datetime, t: datetime) -> str:
    return f"{max(0.0, (now - t).total_seconds()):.0f} s ago"


# The server's log (`mlops server` keeps it): the scheduler's last error, with its exception.
_ERROR = re.compile(r"\|\s*ERROR\s*\|.*schedul", re.IGNORECASE)
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception)\b.*")


def scheduler_error(log: Path, tail_bytes: int = 256_000) -> str | None:
    """The scheduler's last error in a Prefect server's log (its exception line, or the error
    line itself); None when the log has none or is not there."""
    try:
        with log.open("rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - tail_bytes))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    starts = [i for i, line in enumerate(lines) if _ERROR.search(line)]
    if not starts:
        return None
    first = starts[-1]
    for line in lines[first + 1 : first + 200]:
        if _EXCEPTION.match(line.strip()):
            return line.strip()
    return lines[first].strip()


async def read_health(
    api_deployments: dict[str, str],
    wanted: dict[str, ScheduleSpec],
    *,
    grace_s: float,
    server_log: Path | None = None,
    now: datetime | None = None,
) -> list[ScheduleHealth]:
    """Each deployment's schedule health from the Prefect server PREFECT_API_URL names.
    `api_deployments` maps retrain/monitor to "flow/deployment"; `wanted` is params.yaml's."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
    )
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.exceptions import ObjectNotFound

    now = now or datetime.now(UTC)
    error = scheduler_error(server_log) if server_log else None
    out = []
    async with get_client() as client:
        for what, full_name in api_deployments.items():
            spec = wanted[what]
            try:
                deployment = await client.read_deployment_by_name(full_name)
            except ObjectNotFound:
                status = "not deployed" if spec.on else "off"
                out.append(
                    ScheduleHealth(
                        what=what, deployment=full_name, schedule=spec.describe(), status=status,
                        reason="not on the server: `mlops worker` (or `mlops schedule`) puts it "
                        "there" if spec.on else "no schedule",
                    )
                )  # fmt: skip
                continue
            held = [s for s in deployment.schedules if _cadence(s.schedule) is not None]
            if not held:
                out.append(
                    ScheduleHealth(
                        what=what, deployment=full_name, schedule="off",
                        status="not deployed" if spec.on else "off",
                        reason=(f"params.yaml asks {spec.describe()}, the server holds none: "
                                "restart `mlops worker` or run `mlops schedule` again")
                        if spec.on else "no schedule",
                        in_params=spec.describe() if spec.on else "",
                    )
                )  # fmt: skip
                continue
            # The latest runs due by now, and the next one: the scheduler creates runs up to
            # 100 ahead, so one query sorted by time could hold only future ones.
            of_it = DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
            runs = [
                *await client.read_flow_runs(
                    deployment_filter=of_it,
                    flow_run_filter=FlowRunFilter(
                        expected_start_time=FlowRunFilterExpectedStartTime(before_=now)
                    ),
                    sort=FlowRunSort.EXPECTED_START_TIME_DESC,
                    limit=50,
                ),
                *await client.read_flow_runs(
                    deployment_filter=of_it,
                    flow_run_filter=FlowRunFilter(
                        expected_start_time=FlowRunFilterExpectedStartTime(after_=now)
                    ),
                    sort=FlowRunSort.EXPECTED_START_TIME_ASC,
                    limit=5,
                ),
            ]
            infos = [_run_info(r) for r in runs if r.expected_start_time is not None]
            schedule = held[0]
            cadence = _cadence(schedule.schedule)
            assert cadence is not None
            health = judge(
                what=what, deployment=full_name, cadence=cadence, active=schedule.active,
                active_since=schedule.created or now, runs=infos, now=now, grace_s=grace_s,
                worker_polled=deployment.last_polled, server_error=error,
                deployment_paused=bool(deployment.paused),
            )  # fmt: skip
            if spec.describe() != cadence.describe().split(" (")[0]:
                health = replace(health, in_params=spec.describe())
            out.append(health)
    return out


async def held_schedules(api_deployments: dict[str, str]) -> dict[str, str]:
    """retrain/monitor -> the schedule the server holds ("off" for none), for the deployments
    the server has (one not there yet is left out)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    held = {}
    async with get_client() as client:
        for what, full_name in api_deployments.items():
            try:
                deployment = await client.read_deployment_by_name(full_name)
            except ObjectNotFound:
                continue
            cadences = [c for s in deployment.schedules if (c := _cadence(s.schedule))]
            held[what] = cadences[0].describe().split(" (")[0] if cadences else "off"
    return held


def _cadence(schedule: Any) -> Cadence | None:
    cron = getattr(schedule, "cron", None)
    if cron:
        return Cadence(cron=cron, timezone=getattr(schedule, "timezone", None) or "UTC")
    interval = getattr(schedule, "interval", None)
    if interval:
        return Cadence(every_s=interval.total_seconds(), anchor=schedule.anchor_date)
    return None  # an RRule set in the UI: not one of ours


def _run_info(run: Any) -> RunInfo:
    state = run.state
    return RunInfo(
        id=str(run.id),
        name=run.name,
        expected_start=run.expected_start_time,
        state_type=str(run.state_type.value) if run.state_type else "SCHEDULED",
        state_name=state.name if state else "",
        auto_scheduled=bool(run.auto_scheduled),
        end_time=run.end_time,
        message=(state.message or "") if state else "",
    )
