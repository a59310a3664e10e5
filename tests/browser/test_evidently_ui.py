"""The ops teams' UI: monitor runs in an Evidently workspace, and the dashboard a browser shows.

Three monitor runs on ai4i windows with a growing ambient shift go into a workspace; the
dashboard must show our four panels with a point (or bar) per run, the rows bars in proportion to
the rows, and a gap where a run had no labels. The browser is Debian's Chromium driven by
Playwright; without one the browser test skips loudly, and fails under MLOPS_REQUIRE_BROWSER=1 (CI).
Its screenshot lands in the test's tmp dir and in $MLOPS_TEST_SCREENS (default:
artifacts/test-screens/ at the repository root).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from mlops.errors import MlopsError
from monitoring import ui
from monitoring.drift import compare
from pipelines.sources import Ai4iDrift, generate_ai4i

REPO = Path(__file__).resolve().parents[2]
REQUIRE_BROWSER = os.environ.get("MLOPS_REQUIRE_BROWSER", "") not in ("", "0", "false")
MODEL = "ai4i-clf"
NUMERICAL = ["Air temperature [K]", "Process temperature [K]", "Rotational speed [rpm]"]
CATEGORICAL = ["Type"]
T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
# (ambient shift K, window rows, estimated f1, realized f1: None = no labels yet)
WINDOWS = [(0.0, 150, 0.91, 0.90), (2.0, 200, 0.86, 0.83), (4.0, 250, 0.80, None)]
PANELS = ["Drift share", "Drifted columns", "Estimated and realized f1", "Rows per window"]


@dataclass(frozen=True)
class Monitored:
    root: Path  # the mlops workspace
    workspace: Path  # its Evidently workspace
    expected: list[dict[str, float | None]]  # the values given to add_run, in time order


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Monitored:
    """An mlops workspace whose Evidently workspace holds three monitor runs of MODEL, an hour
    apart."""
    from pipelines.init import init_workspace

    for key in ("MLOPS_HOME", "MLOPS_DATABASE_URL", "MLOPS_WORKSPACE"):
        os.environ.pop(key, None)
    mlops_ws = init_workspace(tmp_path_factory.mktemp("ui") / "ws")
    workspace = mlops_ws.evidently_dir
    reference = generate_ai4i(300, seed=1)
    expected = []
    for i, (shift, rows, estimated, realized) in enumerate(WINDOWS):
        current = generate_ai4i(rows, seed=10 + i, drift=Ai4iDrift(ambient_shift_k=shift))
        result, snapshot = compare(reference, current, numerical=NUMERICAL, categorical=CATEGORICAL)
        values: dict[str, float | None] = {
            "drift_share": result.drift_share,
            "drifted_columns": len(result.drifted),
            "rows": rows,
            "estimated_f1": estimated,
            "realized_f1": realized,
        }
        when = T0 + timedelta(hours=i)
        if i == 1:  # a caller's local time is stored as UTC
            when = when.astimezone(timezone(timedelta(hours=2)))
        ui.add_run(workspace, MODEL, snapshot, timestamp=when, values=values, tags=["ai4i"])
        expected.append(values)
    # the +4 K window must drift in both temperatures, or the panels show nothing moving
    assert {"Air temperature [K]", "Process temperature [K]"} <= set(result.drifted)
    return Monitored(mlops_ws.root, workspace, expected)


# --- the workspace, without a browser ---


def test_runs_read_back_with_their_values_and_times(monitored: Monitored) -> None:
    runs = ui.read_runs(monitored.workspace, MODEL)
    assert [r.timestamp for r in runs] == [T0 + timedelta(hours=i) for i in range(3)]
    for run, given in zip(runs, monitored.expected, strict=True):
        known = {k: pytest.approx(v) for k, v in given.items() if v is not None}
        assert run.values == known
        assert "ai4i" in run.tags
    # no labels in the last window: the realized metric is missing, not a zero
    assert "realized_f1" not in runs[-1].values
    # a model without runs has none (and is not created by reading)
    assert ui.read_runs(monitored.workspace, "other-model") == []


def test_the_drift_report_is_kept_beside_our_values(monitored: Monitored) -> None:
    from evidently.ui.workspace import Workspace

    ws = Workspace(str(monitored.workspace))
    (project,) = ws.search_project(MODEL)
    for snapshot_id in ws.list_runs(project.id):
        stored = ws.get_run(project.id, snapshot_id)
        assert stored is not None
        kinds = [
            m.metric_value_location.metric.params["type"] for m in stored.metric_results.values()
        ]
        # data loss: a per-column drift result for every monitored column survives the merge
        assert sum(k.endswith("ValueDrift") for k in kinds) == len(NUMERICAL + CATEGORICAL)


def test_one_project_and_no_duplicated_panels(monitored: Monitored) -> None:
    from evidently.ui.workspace import Workspace

    # add_run made the panels on its first call; more calls add nothing
    assert ui.ensure_dashboard(monitored.workspace, MODEL) == []
    assert ui.ensure_dashboard(monitored.workspace, MODEL, metrics=["f1"]) == []
    ws = Workspace(str(monitored.workspace))
    assert [p.name for p in ws.list_projects()] == [MODEL]
    (project,) = ws.list_projects()
    dashboard = ws.get_dashboard(project.id)
    assert [p.title for p in dashboard.panels] == PANELS
    (tab,) = dashboard.tabs
    assert tab.title == ui.TAB
    assert tab.panels == [p.id for p in dashboard.panels]  # each panel listed once


def test_a_new_metric_gets_its_panel_once(tmp_path: Path) -> None:
    workspace = tmp_path / "evidently"
    assert ui.ensure_dashboard(workspace, MODEL) == [
        "Drift share",
        "Drifted columns",
        "Rows per window",
    ]
    assert ui.ensure_dashboard(workspace, MODEL, metrics=["accuracy"]) == [
        "Estimated and realized accuracy"
    ]
    assert ui.ensure_dashboard(workspace, MODEL, metrics=["accuracy"]) == []


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"drifted_columns": 1, "rows": 10}, "lack"),  # the dashboard's core series
        ({"drift_share": None, "drifted_columns": 1, "rows": 10}, "lack"),
        ({"drift_share": "0.5", "drifted_columns": 1, "rows": 10}, "number"),
        ({"drift_share": True, "drifted_columns": 1, "rows": 10}, "number"),
        ({"drift_share": float("inf"), "drifted_columns": 1, "rows": 10}, "finite"),
        ({"drift_share": 0.1, "drifted_columns": 1, "rows": 10, "F1 score": 1.0}, "name"),
    ],
)
def test_add_run_refuses_malformed_values(
    tmp_path: Path, values: dict[str, Any], problem: str
) -> None:
    with pytest.raises(MlopsError, match=problem):
        ui.add_run(tmp_path / "ws", MODEL, object(), timestamp=T0, values=values)
    assert not (tmp_path / "ws").exists()


def test_ui_command_is_evidentlys_own_cli(tmp_path: Path) -> None:
    command = ui.ui_command(tmp_path, "0.0.0.0", 8123)
    assert command[:4] == [sys.executable, "-m", "evidently.cli", "ui"]
    assert command[4:] == ["--workspace", str(tmp_path), "--host", "0.0.0.0", "--port", "8123"]


# --- the dashboard in a real browser ---


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_dashboard_shows_every_run_in_the_browser(
    monitored: Monitored, chromium: str, tmp_path: Path, mlops_ui: Any, save_screen: Any
) -> None:
    from playwright.sync_api import expect, sync_playwright

    rows = [float(v["rows"] or 0) for v in monitored.expected]
    with mlops_ui(monitored.root, tmp_path) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True)
        context = browser.new_context(
            viewport={"width": 1400, "height": 1300}, reduced_motion="reduce"
        )
        page = context.new_page()
        try:
            # the way an operator goes: the project list, then the model's project
            page.goto(server.url)
            page.get_by_text(MODEL, exact=True).click()
            expect(page).to_have_url(f"{server.url}/projects/{_project_id(server.url)}")

            def card(title: str) -> Any:
                heading = page.get_by_role("heading", name=title, exact=True)
                return page.locator(".MuiCard-root").filter(has=heading)

            for title in PANELS:
                expect(card(title)).to_have_count(1)
            # a marker per run on the line panels; the last run has no realized f1: a gap
            expect(card("Drift share").locator(".MuiMarkElement-root")).to_have_count(3)
            metric = card("Estimated and realized f1")
            expect(metric.locator(".MuiMarkElement-root")).to_have_count(3 + 2)
            expect(metric.locator(".MuiChartsLegend-root")).to_contain_text("estimated")
            expect(metric.locator(".MuiChartsLegend-root")).to_contain_text("realized")
            expect(card("Drifted columns").locator(".MuiBarElement-root")).to_have_count(3)
            bars = card("Rows per window").locator(".MuiBarElement-root")
            expect(bars).to_have_count(3)
            # the bars stand for our numbers: heights in proportion to the windows' rows
            heights = [float(bars.nth(i).get_attribute("height") or 0) for i in range(3)]
            assert [h / heights[-1] for h in heights] == pytest.approx(
                [r / rows[-1] for r in rows], rel=0.02
            )
            # the x axis is the runs' timestamps, in UTC
            ticks = card("Rows per window").locator(
                ".MuiChartsAxis-directionX .MuiChartsAxis-tickLabel"
            )
            assert ticks.all_text_contents() == [
                f"{T0 + timedelta(hours=i):%Y-%m-%d %H:%M:%S}" for i in range(3)
            ]
        finally:
            save_screen(page, tmp_path, "evidently-dashboard.png")
            browser.close()


def _project_id(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(f"{url}/api/projects", timeout=5) as r:
        (project,) = [p for p in json.load(r) if p["name"] == MODEL]
    return str(project["id"])
