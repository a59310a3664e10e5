"""The Evidently workspace as the ops teams' UI: a project per model, a snapshot per monitor run.

Each monitor run's drift report goes into a local Evidently workspace (a folder) together with our
own numbers for that window, so `evidently ui` shows a dashboard of their history:

    add_run(folder, "ai4i", snapshot, timestamp=window_end,
            values={"drift_share": 0.5, "drifted_columns": 2, "rows": 800,
                    "estimated_f1": 0.81, "realized_f1": None})
    server = start_ui(folder, port=8000)   # ... server.url ...; server.stop()

Evidently's dashboard panels plot only values of metrics found in snapshots, so our numbers enter
as metrics: a small extra Report computes `MeanValue` of each number over a one-row table (the
mean of one value is the value), and its results join the drift report's in the one snapshot. Their
columns carry the prefix `mlops.`, so they never mix with a data column's own MeanValue. A missing
number (no labels yet, so no realized metric) is left out, and its line shows a gap.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from numbers import Real
from pathlib import Path
from typing import IO, Any

from filelock import FileLock

from mlops.errors import MlopsError

PREFIX = "mlops."  # column names of our numbers in the snapshots
REQUIRED = ("drift_share", "drifted_columns", "rows")
TAB = "Monitoring"
_MEAN_VALUE = "evidently:metric_v2:MeanValue"
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_LOCK = ".mlops-ui.lock"


@dataclass(frozen=True)
class MonitorRun:
    """One monitor run as the workspace holds it."""

    snapshot_id: str
    timestamp: datetime  # in UTC
    name: str | None
    tags: tuple[str, ...]
    values: dict[str, float]  # our numbers; a missing one (None at add_run) is absent


def add_run(
    workspace: Path,
    model: str,
    snapshot: Any,
    *,
    timestamp: datetime,
    values: Mapping[str, float | None],
    tags: Sequence[str] = (),
) -> str:
    """Adds a monitor run to `model`'s project (created on first use) and makes sure its dashboard
    exists; returns the new snapshot's id.

    Args:
        workspace: the Evidently workspace folder (created if missing).
        model: the model's name; also the project's name.
        snapshot: what `Report(...).run(current, reference)` returned, e.g. `drift.compare`'s.
        timestamp: when the window ended; the dashboard's x axis. A naive time is taken as UTC.
        values: `drift_share`, `drifted_columns`, `rows`, and `estimated_<metric>` /
            `realized_<metric>` (None when not known), plus any other number to keep.
        tags: snapshot tags, for filtering in the UI.
    """
    numbers = _check_values(values)
    from evidently.core.report import Snapshot
    from evidently.core.serialization import SnapshotModel

    if not isinstance(snapshot, Snapshot):
        raise MlopsError(f"ui: expected an Evidently Snapshot, got {type(snapshot).__name__}")
    base = snapshot.to_snapshot_model()
    ours = _values_model(numbers)
    when = _utc_naive(timestamp)
    merged = SnapshotModel(
        report=base.report,
        name=base.name or f"{model} {when:%Y-%m-%d %H:%M} UTC",
        timestamp=when,
        metadata={**base.metadata, "model": model},
        tags=list(dict.fromkeys([*base.tags, *tags])),
        metric_results={**base.metric_results, **ours.metric_results},
        top_level_metrics=[*base.top_level_metrics, *ours.top_level_metrics],
        # Our numbers on top as one row of counters, then the drift report as Evidently drew it.
        widgets=[_counters(numbers), *base.widgets],
        tests_widgets=base.tests_widgets,
    )
    ws = _open(workspace)
    with _locked(workspace):
        project = _project(ws, model)
        ref = ws.add_run(project.id, Snapshot.load_model(merged))
        _ensure_panels(ws, project.id, _metric_names(numbers))
    return str(ref.id)


def ensure_dashboard(workspace: Path, model: str, metrics: Iterable[str] = ()) -> list[str]:
    """Creates the dashboard panels of `model`'s project that are not there yet; returns the titles
    of the panels added (none on a second call).

    The primary metric's panel is made for each name in `metrics` and each `estimated_<name>` or
    `realized_<name>` that the project's runs hold.
    """
    ws = _open(workspace)
    with _locked(workspace):
        project = _project(ws, model)
        names = set(metrics)
        for run in _runs(ws, project.id):
            names |= _metric_names(run.values)
        return _ensure_panels(ws, project.id, names)


def read_runs(workspace: Path, model: str) -> list[MonitorRun]:
    """The monitor runs of `model`'s project, oldest first; [] when it has none."""
    ws = _open(workspace)
    found = [p for p in ws.search_project(model) if p is not None]
    return sorted(
        (run for p in found for run in _runs(ws, p.id)), key=lambda r: (r.timestamp, r.snapshot_id)
    )


def ui_command(workspace: Path, host: str = "127.0.0.1", port: int = 8000) -> list[str]:
    """The command that serves `workspace` with Evidently's UI (this interpreter's evidently)."""
    return [
        sys.executable,
        "-m",
        "evidently.cli",
        "ui",
        "--workspace",
        str(workspace),
        "--host",
        host,
        "--port",
        str(port),
    ]


@dataclass
class UiServer:
    """A running `evidently ui`; stop it with `stop()` or use it as a context manager."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path
    _log: IO[bytes] | None = field(default=None, repr=False)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> UiServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_ui(
    workspace: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    timeout: float = 60.0,
    log_path: Path | None = None,
) -> UiServer:
    """Starts `evidently ui` on `workspace` and returns once it answers HTTP.

    Its output goes to `log_path` (a temporary file if not given); a server that exits or does not
    answer within `timeout` seconds is stopped and reported with the end of that log.
    """
    workspace.mkdir(parents=True, exist_ok=True)
    if _port_taken(host, port):
        raise MlopsError(f"ui: port {port} on {host} is already in use; choose another with --port")
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="evidently-ui-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    log = log_path.open("wb")
    env = {**os.environ, "DO_NOT_TRACK": "1"}  # Evidently's usage telemetry has nowhere to go
    process = subprocess.Popen(
        ui_command(workspace, host, port), stdout=log, stderr=subprocess.STDOUT, env=env
    )
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"  # noqa: S104
    server = UiServer(process, url, log_path, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            server.stop()
            raise MlopsError(
                f"ui: evidently ui exited with code {process.returncode}: {_tail(log_path)}"
            )
        if _answers(url + "/api/version"):
            return server
        time.sleep(0.25)
    server.stop()
    raise MlopsError(
        f"ui: evidently ui did not answer on {url} in {timeout:.0f} s: {_tail(log_path)}"
    )


def dashboard_panels(metrics: Iterable[str]) -> list[Any]:
    """Our panels in order: drift share, drifted columns, estimated and realized metric, rows."""
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import bar_plot_panel, line_plot_panel

    def series(name: str, legend: str) -> PanelMetric:
        return PanelMetric(
            legend=legend, metric=_MEAN_VALUE, metric_labels={"column": PREFIX + name}
        )

    panels = [
        line_plot_panel(
            "Drift share",
            [series("drift_share", "share of columns drifted")],
            description="Share of the monitored columns whose drift test failed, per window",
            size="half",
        ),
        bar_plot_panel(
            "Drifted columns",
            [series("drifted_columns", "drifted columns")],
            description="Number of columns whose drift test failed, per window",
            size="half",
        ),
    ]
    for name in sorted(set(metrics)):
        panels.append(
            line_plot_panel(
                f"Estimated and realized {name}",
                [series(f"estimated_{name}", "estimated"), series(f"realized_{name}", "realized")],
                description="Estimated without labels; realized once labels arrive",
                size="half",
            )
        )
    panels.append(
        bar_plot_panel(
            "Rows per window",
            [series("rows", "rows")],
            description="Served records in each monitored window",
            size="half",
        )
    )
    return panels


def _check_values(values: Mapping[str, float | None]) -> dict[str, float]:
    """Our numbers as floats, without the missing ones; refuses a malformed set."""
    missing = [k for k in REQUIRED if values.get(k) is None]
    if missing:
        raise MlopsError(f"ui: the run's values lack {missing}")
    found: dict[str, float] = {}
    for key, value in values.items():
        if not isinstance(key, str) or not _NAME.fullmatch(key):
            raise MlopsError(f"ui: {key!r} is not a value name (lowercase letters, digits, _)")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, Real):
            raise MlopsError(f"ui: value {key} must be a number or None, got {value!r}")
        value = float(value)
        if math.isnan(value):  # a metric that could not be computed: a gap, as None is
            continue
        if not math.isfinite(value):
            raise MlopsError(f"ui: value {key} must be finite, got {value!r}")
        found[key] = value
    return found


def _metric_names(values: Iterable[str]) -> set[str]:
    return {
        k.split("_", 1)[1]
        for k in values
        if k.startswith(("estimated_", "realized_")) and len(k.split("_", 1)[1]) > 0
    }


def _values_model(numbers: Mapping[str, float]) -> Any:
    """Evidently's MeanValue of each number over a one-row table: SingleValue results that
    dashboard panels can plot. Their own widgets are dropped (a histogram of one value)."""
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import MeanValue

    columns = [PREFIX + k for k in numbers]
    frame = pd.DataFrame([list(numbers.values())], columns=columns, dtype="float64")
    data = Dataset.from_pandas(frame, data_definition=DataDefinition(numerical_columns=columns))
    model = Report([MeanValue(column=c) for c in columns]).run(data, None).to_snapshot_model()
    for result in model.metric_results.values():
        result.widget = []
    return model


def _counters(numbers: Mapping[str, float]) -> Any:
    from evidently.legacy.renderers.html_widgets import CounterData, counter

    def shown(v: float) -> str:
        return str(int(v)) if v.is_integer() and abs(v) >= 1 else f"{v:.4g}"

    return counter(
        title="Monitor run", counters=[CounterData(k, shown(v)) for k, v in numbers.items()]
    )


def _open(workspace: Path) -> Any:
    from evidently.ui.workspace import Workspace

    workspace.mkdir(parents=True, exist_ok=True)
    return Workspace(str(workspace))


def _locked(workspace: Path) -> FileLock:
    """One writer at a time per workspace: two monitor runs must not both create the project."""
    return FileLock(str(workspace / _LOCK), timeout=60)


def _project(ws: Any, model: str) -> Any:
    if not model or not model.strip():
        raise MlopsError("ui: the model name is empty")
    found = [p for p in ws.search_project(model) if p is not None]
    if found:
        return min(found, key=lambda p: str(p.id))  # deterministic if a name was ever doubled
    from evidently.sdk.models import ProjectModel

    return ws.add_project(ProjectModel(name=model, description=f"Monitor runs of model {model}"))


def _ensure_panels(ws: Any, project_id: Any, metrics: Iterable[str]) -> list[str]:
    """Adds the missing panels in one write. Evidently's `add_panel` into a named tab lists the
    panel twice in that tab in 0.7.23, so the dashboard model is edited here instead."""
    from evidently.sdk.models import DashboardTabModel

    dashboard = ws.get_dashboard(project_id)
    have = {p.title for p in dashboard.panels}
    new = [p for p in dashboard_panels(metrics) if p.title not in have]
    if not new:
        return []
    tab = next((t for t in dashboard.tabs if t.title == TAB), None)
    if tab is None:
        tab = DashboardTabModel(title=TAB, panels=[])
        dashboard.tabs.insert(0, tab)
    dashboard.panels.extend(new)
    tab.panels.extend(p.id for p in new)
    ws.save_dashboard(project_id, dashboard)
    return [p.title for p in new]


def _runs(ws: Any, project_id: Any) -> list[MonitorRun]:
    runs = []
    for snapshot_id in ws.list_runs(project_id):
        model = ws.get_run(project_id, snapshot_id)
        if model is None:
            continue
        values = {}
        for result in model.metric_results.values():
            location = result.metric_value_location
            params = location.metric.params if location is not None else {}
            column = str(params.get("column", ""))
            if params.get("type") == _MEAN_VALUE and column.startswith(PREFIX):
                values[column[len(PREFIX) :]] = float(result.value)
        runs.append(
            MonitorRun(
                str(snapshot_id),
                model.timestamp.replace(tzinfo=UTC),
                model.name,
                tuple(model.tags),
                values,
            )
        )
    return runs


def _utc_naive(when: datetime) -> datetime:
    """Evidently compares snapshot times with naive ones, so they are stored naive, in UTC."""
    if when.tzinfo is None:
        return when
    return when.astimezone(UTC).replace(tzinfo=None)


def _port_taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1" if host in ("0.0.0.0", "") else host, port)) == 0  # noqa: S104


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 (our own http://host:port)
            json.loads(r.read() or b"null")
            return bool(r.status == 200)
    except (OSError, urllib.error.URLError, ValueError):
        return False


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"
