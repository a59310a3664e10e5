"""When a schedule counts as firing (flows/schedules.py): the judgement on the runs a server
reports, the interval and cron arithmetic, and the scheduler's error read from a server log.
The same judgement on a real server and worker: tests/integration/test_schedules.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from flows.schedules import (
    Cadence,
    RunInfo,
    judge,
    parse_every,
    scheduler_error,
)
from mlops.errors import MlopsError
from mlops.params import load_params
from mlops.settings import Workspace

NOW = datetime(2026, 12, 3, 12, 0, 30, tzinfo=UTC)
MINUTE = Cadence(cron="* * * * *")


def _run(minutes_ago: float, state: str = "COMPLETED", name: str = "Completed") -> RunInfo:
    t = datetime(2026, 12, 3, 12, 0, tzinfo=UTC) - timedelta(minutes=minutes_ago)
    return RunInfo(
        id=f"r{minutes_ago}", name="run", expected_start=t, state_type=state,
        state_name=name, auto_scheduled=True,
    )  # fmt: skip


def _judge(runs: list[RunInfo], **kw: object) -> tuple[str, str]:
    args: dict = {
        "what": "monitor", "deployment": "mlops-monitor/monitor", "cadence": MINUTE,
        "active": True, "active_since": NOW - timedelta(hours=1), "runs": runs, "now": NOW,
        "grace_s": 20.0,
    }  # fmt: skip
    args.update(kw)
    h = judge(**args)
    return h.status, h.reason


def test_a_schedule_whose_due_runs_ran_is_firing() -> None:
    status, reason = _judge([_run(1), _run(0), _run(-1, "SCHEDULED", "Scheduled")])
    assert status == "firing" and "Completed" in reason


def test_no_run_for_the_due_time_is_not_firing_with_the_servers_error() -> None:
    # The scheduler stopped creating runs two minutes ago (its last run is 12:58's).
    status, reason = _judge([_run(2)], server_error="InvalidRequestError: bulk DML")
    assert status == "not firing"
    assert "no run was created for 2026-12-03 12:00:00 UTC" in reason
    assert reason.endswith("the server's log: InvalidRequestError: bulk DML")


def test_a_due_run_no_worker_started_is_not_firing() -> None:
    late = _run(1, "SCHEDULED", "Late")
    status, reason = _judge([_run(2), late, _run(0, "SCHEDULED", "Late")],
                            worker_polled=NOW - timedelta(seconds=75))  # fmt: skip
    assert status == "not firing"
    assert "has not started (Late)" in reason and "last polled 75 s ago" in reason


def test_within_the_grace_a_run_not_yet_started_is_fine() -> None:
    # 12:00:00 was due 30 s ago; the grace is 60 s: the worker may still be picking it up.
    status, _ = _judge([_run(1), _run(0, "SCHEDULED", "Scheduled")], grace_s=60.0)
    assert status == "firing"


def test_a_failed_last_run_is_failing_and_a_new_schedule_is_waiting() -> None:
    failed = RunInfo("x", "run", NOW - timedelta(seconds=30), "FAILED", "Failed", True,
                     message="no production version")  # fmt: skip
    status, reason = _judge([failed])
    assert status == "failing" and "no production version" in reason
    status, reason = _judge([], active_since=NOW - timedelta(seconds=10))
    assert status == "waiting" and "12:01:00" in reason
    assert _judge([], active=False)[0] == "paused"
    status, reason = _judge([_run(1), _run(0)], deployment_paused=True)
    assert status == "not firing" and "its worker stopped" in reason


def test_manual_runs_do_not_count_as_scheduled_ones() -> None:
    manual = RunInfo("m", "run", NOW - timedelta(seconds=25), "COMPLETED", "Completed", False)
    assert _judge([_run(3), manual])[0] == "not firing"


def test_interval_arithmetic_from_its_anchor() -> None:
    anchor = datetime(2026, 12, 3, 11, 59, 55, tzinfo=UTC)
    every = Cadence(every_s=10, anchor=anchor)
    assert every.previous(NOW) == datetime(2026, 12, 3, 12, 0, 25, tzinfo=UTC)
    assert every.next(NOW) == datetime(2026, 12, 3, 12, 0, 35, tzinfo=UTC)
    assert every.previous(anchor - timedelta(seconds=1)) is None
    assert MINUTE.previous(NOW) == datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    assert every.describe() == "every 10s" and MINUTE.describe() == "cron * * * * *"


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("15m", 900), ("6h", 21600), ("1d", 86400), ("45", 45)]
)
def test_intervals_parse(text: str, seconds: float) -> None:
    assert parse_every(text) == seconds


@pytest.mark.parametrize("text", ["", "often", "5 weeks", "0s", "-3m"])
def test_bad_intervals_say_what_is_wrong(text: str) -> None:
    with pytest.raises(ValueError, match="interval"):
        parse_every(text)


def test_the_schedulers_error_is_read_from_the_server_log(tmp_path: Path) -> None:
    # As Prefect 3.8.8's server logged it on SQLAlchemy 2.1, every loop.
    log = tmp_path / "prefect-server.log"
    log.write_text(
        "15:57:44.102 | INFO    | uvicorn.error - Application startup complete.\n"
        "15:57:59.192 | ERROR   | docket.dependencies - ↩ [    71ms] "
        "schedule_recent_deployments(){schedule_recent_deployments}\n"
        "Traceback (most recent call last):\n"
        '  File "/x/prefect/server/services/scheduler.py", line 301, in _insert\n'
        "sqlalchemy.exc.InvalidRequestError: Can't evaluate bulk DML statement; please "
        "supply a bulk_dml decorated function\n"
        "15:58:00.001 | INFO    | prefect.server - still here\n"
    )
    assert scheduler_error(log) == (
        "sqlalchemy.exc.InvalidRequestError: Can't evaluate bulk DML statement; please "
        "supply a bulk_dml decorated function"
    )
    log.write_text("15:57:44.102 | INFO    | uvicorn.error - Application startup complete.\n")
    assert scheduler_error(log) is None
    assert scheduler_error(tmp_path / "missing.log") is None


def test_schedule_commands_refuse_bad_input_and_write_nothing(
    ws: Workspace, mlops_cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    before = ws.params_path.read_bytes()
    for args, says in [
        (["retrain", "--cron", "every day"], "--cron 'every day' is not a cron line"),
        (["monitor", "--every", "often"], "--every 'often' is not an interval"),
        (["monitor", "--every", "5m", "--cron", "* * * * *"], "give one of --cron, --every"),
        (["monitor"], "give one of --cron, --every or --off"),
    ]:
        done = mlops_cli("-w", ws.root, "schedule", *args)
        assert done.exit_code != 0 and says in done.stderr, (args, done.stderr)
        assert done.stderr.count("\n") == 1
        assert ws.params_path.read_bytes() == before  # nothing half-written

    # Kept in params.yaml; a cron line replaces an interval (a deployment has one of them).
    assert mlops_cli("-w", ws.root, "schedule", "monitor", "--every", "15m").exit_code == 0
    loop = load_params(ws.params_path).loop
    assert (loop.monitor_every_s, loop.monitor_cron) == (900, "")
    assert mlops_cli("-w", ws.root, "schedule", "monitor", "--cron", "*/5 * * * *").exit_code == 0
    loop = load_params(ws.params_path).loop
    assert (loop.monitor_every_s, loop.monitor_cron) == (0, "*/5 * * * *")
    # Without a server nothing can tell whether it fires, and the list says so.
    listed = mlops_cli("-w", ws.root, "schedule", "list", "--json")
    assert listed.exit_code == 0, listed.stderr
    by_what = {h["what"]: h for h in json.loads(listed.stdout)}
    assert by_what["monitor"]["status"] == "unknown"
    assert "PREFECT_API_URL is not set" in by_what["monitor"]["reason"]
    assert by_what["retrain"]["status"] == "off"
    assert mlops_cli("-w", ws.root, "schedule", "monitor", "--off").exit_code == 0
    assert load_params(ws.params_path).loop.monitor_cron == ""


def test_params_refuse_both_a_cron_line_and_an_interval(ws: Workspace) -> None:
    with pytest.raises(MlopsError, match="monitor_cron and monitor_every_s are both set"):
        load_params(ws.params_path, ["loop.monitor_cron=* * * * *", "loop.monitor_every_s=60"])
