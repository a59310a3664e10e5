"""Monitoring end to end: traffic through the real `mlops serve` (the session's server), then
`mlops monitor` in its own process on the prediction log the server wrote.

- undrifted traffic (rows of the data the production version was built from): nothing flagged;
- ambient temperature +3 K: both temperature columns flagged and only them; an alert goes out,
  as a Prefect event to a real Prefect server and as a JSON POST to a webhook receiver here;
- `mlops drift list/show` and `mlops feedback` on the same store.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import httpx
import pandas as pd
import pytest
from serving_kit import Served, wait_for

from mlops.predictions import read_log
from pipelines.sources import AI4I_SPEC, Ai4iDrift, generate_ai4i

TEMPERATURES = {"Air temperature [K]", "Process temperature [K]"}


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A local receiver standing in for Slack (outside our stack): it keeps what it is sent."""
    got: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append(json.loads(body))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hooks/T000/B000/secret", got
    finally:
        server.shutdown()


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    cols = list(AI4I_SPEC.features)
    return [
        {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
        for row in frame[cols].to_dict(orient="records")
    ]


def _send(served: Served, frame: pd.DataFrame, per_request: int = 100) -> int:
    """POST the rows; returns how many the log must now hold on top of what it held."""
    before = len(read_log(served.ws.predictions_dir, "ai4i"))
    records = _records(frame)
    with httpx.Client(base_url=served.url, timeout=30) as client:
        for i in range(0, len(records), per_request):
            r = client.post("/predict", json={"records": records[i : i + per_request]})
            assert r.status_code == 200, r.text
    want = before + len(records)
    wait_for(
        lambda: len(read_log(served.ws.predictions_dir, "ai4i")) >= want,
        what="the prediction log",
    )
    return want


def _mlops(served: Served, *args: str, env: dict[str, str] | None = None) -> Any:
    proc = subprocess.run(
        [sys.executable, "-m", "mlops", "-w", str(served.ws.root), *args],
        env={**served.env, "COLUMNS": "200", **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc


def _base_rows() -> pd.DataFrame:
    """The rows the production version was built from (the fixture's batch: 3,000, seed 5),
    shuffled: traffic with no drift at all."""
    return generate_ai4i(3000, 5).sample(frac=1.0, random_state=0).reset_index(drop=True)


def test_monitor_flags_the_shifted_columns_and_alerts(
    served: Served, prefect_server: None, webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    from prefect.settings import PREFECT_API_URL

    served.reset()
    url, received = webhook
    env = {"MLOPS_ALERT_WEBHOOK": url, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    rows = _base_rows().head(2000)

    _send(served, rows)
    calm = _mlops(served, "monitor", "--last", "2000", "--json", env=env)
    assert calm.returncode == 0, calm.stderr
    calm_summary = json.loads(calm.stdout)
    assert calm_summary["rows"] == 2000
    assert calm_summary["drifted"] == []
    assert calm_summary["reasons"] == [] and calm_summary["alerts"] == []
    assert received == []
    # quality estimated without labels, trusted: nothing moved
    metric = calm_summary["primary_metric"]
    assert metric["reliable"] is True and metric["estimated"] is not None
    assert metric["band"][0] <= metric["estimated"] <= metric["band"][1]
    assert calm_summary["multivariate"]["flagged"] is False

    shifted = rows.copy()
    for c in TEMPERATURES:
        shifted[c] = shifted[c] + 3.0
    _send(served, shifted)
    hot = _mlops(served, "monitor", "--last", "2000", "--json", env=env)
    assert hot.returncode == 0, hot.stderr
    summary = json.loads(hot.stdout)
    assert set(summary["drifted"]) == TEMPERATURES
    assert summary["reasons"], "a third of the inputs drifted: the default threshold is 0.3"
    channels = {a["channel"]: a for a in summary["alerts"]}
    assert channels["webhook"]["ok"] and channels["prefect"]["ok"], summary["alerts"]

    # The webhook got one Slack-compatible message naming the report; the address (with its
    # token) is not in what the monitor printed.
    assert len(received) == 1
    assert f"report {summary['report_id']}" in received[0]["text"]
    assert "secret" not in hot.stdout + hot.stderr

    # The Prefect server holds the event (found by the id the monitor sent it with; the
    # session's server has other runs' events too), with the summary as its payload.
    ours = _events(str(PREFECT_API_URL.value()), channels["prefect"]["id"])
    assert len(ours) == 1 and ours[0]["payload"]["report_id"] == summary["report_id"]
    assert ours[0]["resource"]["prefect.resource.id"] == "mlops.model.ai4i"
    assert set(ours[0]["payload"]["drifted"]) == TEMPERATURES

    # Ops read it back: the list has both runs; show names each column's method.
    listed = _mlops(served, "drift", "list", "--json")
    reports = {r["id"]: r for r in json.loads(listed.stdout)}
    assert {calm_summary["report_id"], summary["report_id"]} <= set(reports)
    assert reports[summary["report_id"]]["drifted"] is True
    assert reports[calm_summary["report_id"]]["drifted"] is False
    shown = _mlops(served, "drift", "show", str(summary["report_id"]))
    assert shown.returncode == 0, shown.stderr
    assert "Tool wear [min]" in shown.stdout  # names with brackets are data, not markup
    assert "Wasserstein" in shown.stdout or "K-S" in shown.stdout
    html = served.ws.home / reports[summary["report_id"]]["path"]
    assert html.is_file() and html.stat().st_size > 10_000


def test_decoupled_temperatures_pass_per_column_tests_but_not_the_multivariate_check(
    served: Served,
) -> None:
    """Process temperature stops following air temperature; every column keeps exactly its
    values, so no per-column test can see it. The PCA reconstruction check does, and the
    quality estimate is marked unreliable with that reason."""
    served.reset()
    decoupled = generate_ai4i(3000, 5, Ai4iDrift(decouple_temperatures=1.0))
    base = generate_ai4i(3000, 5)
    for c in AI4I_SPEC.features:  # the marginals are the base rows', to the value
        assert sorted(decoupled[c].astype(str)) == sorted(base[c].astype(str))
    _send(served, decoupled.sample(n=2000, random_state=1))
    run = _mlops(served, "monitor", "--last", "2000", "--no-alert", "--json")
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["drifted"] == []
    multivariate = summary["multivariate"]
    assert multivariate["drift_flagged"] is True
    assert multivariate["reconstruction_error"] > multivariate["upper"]
    assert any("multivariate" in r for r in summary["reasons"])
    assert summary["primary_metric"]["reliable"] is False
    assert any("multivariate" in r for r in summary["estimate_reasons"])


def _events(api: str, event_id: str) -> list[dict[str, Any]]:
    """The drift events with this id, once the server has stored it (it ingests them
    asynchronously)."""

    def query() -> list[dict[str, Any]]:
        r = httpx.post(
            f"{api}/events/filter",
            json={
                "filter": {"event": {"name": ["mlops.drift.detected"]}, "id": {"id": [event_id]}},
                "limit": 50,
            },
        )
        r.raise_for_status()
        return [e for e in r.json()["events"] if e["id"] == event_id]

    wait_for(lambda: bool(query()), what="the drift event on the Prefect server")
    return query()


def test_feedback_gives_realized_quality_per_window(served: Served, tmp_path: Any) -> None:
    """Labels sent after serving join the log by request id; the next monitor run reports the
    realized quality of the window, and a bad label file is refused with its row."""
    served.reset()
    frame = _base_rows().iloc[2000:3000].reset_index(drop=True)
    records = _records(frame)
    truth = frame[AI4I_SPEC.target].to_numpy()
    labels = []
    with httpx.Client(base_url=served.url, timeout=30) as client:
        for i in range(0, len(records), 100):
            r = client.post("/predict", json={"records": records[i : i + 100]})
            assert r.status_code == 200, r.text
            rid = r.json()["request_id"]
            labels += [(rid, j, int(truth[i + j])) for j in range(len(records[i : i + 100]))]
    wait_for(
        lambda: len({rid for rid, _, _ in labels} & set(_logged_ids(served))) == 10,
        what="the requests in the log",
    )
    path = tmp_path / "labels.csv"
    pd.DataFrame(labels, columns=["request_id", "record", "label"]).to_csv(path, index=False)
    done = _mlops(served, "feedback", str(path))
    assert done.returncode == 0, done.stderr
    assert "1000 label(s)" in done.stdout and "1000 match" in done.stdout

    bad = tmp_path / "bad.csv"
    pd.DataFrame([["r1", 0, 1], ["r2", 0, 7]], columns=["request_id", "record", "label"]).to_csv(
        bad, index=False
    )
    refused = _mlops(served, "feedback", str(bad))
    assert refused.returncode != 0
    assert "'7'" in refused.stderr and "classes" in refused.stderr

    run = _mlops(served, "monitor", "--last", "1000", "--no-alert", "--json")
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    realized = summary["primary_metric"]["realized"]
    assert realized is not None and 0.0 <= realized <= 1.0
    from pipelines.artifact import load_predictor
    from pipelines.evaluate import evaluate_scores
    from pipelines.gate import model_dir

    predictor = load_predictor(model_dir(served.ws, served.good))
    expected = evaluate_scores(
        "classification", truth, predictor.scores(frame), list(predictor.preprocessor.classes)
    )
    assert realized == pytest.approx(expected[summary["primary_metric"]["name"]], abs=1e-9)
    # Evidently's quality report on the labelled rows sits beside the drift report
    with served.store() as store:
        report = store.get_drift_report(summary["report_id"])
    quality = served.ws.home / report.details["quality_report"]
    assert quality.is_file() and "F1" in quality.read_text()


def _logged_ids(served: Served) -> list[str]:
    return read_log(served.ws.predictions_dir, "ai4i")["request_id"].astype(str).tolist()


def test_the_monitoring_flow_leaves_its_report_in_prefect(
    served: Served, prefect_server: None
) -> None:
    """The monitoring flow on a real Prefect server: a completed run, the report in the store,
    and its markdown artifact on the server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.monitor import monitor_flow

    served.reset()
    _send(served, _base_rows().head(500))
    state = monitor_flow(workspace=str(served.ws.root), last=500, return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["rows"] == 500 and summary["drifted"] == []
    with served.store() as store:
        assert store.get_drift_report(summary["report_id"]).rows == 500

    async def artifacts() -> list[Any]:
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["monitor-ai4i"]))
            )

    import asyncio

    found = asyncio.run(artifacts())
    assert any(f"report {summary['report_id']}" in str(a.data) for a in found)


@pytest.mark.timeout(300)
def test_the_dashboard_shows_the_monitor_runs_of_served_traffic(
    served: Served, chromium: str, mlops_ui: Any, save_screen: Any, tmp_path: Any
) -> None:
    """Monitor runs made by `mlops monitor` on traffic the real server answered, then `mlops ui`
    in headless Chromium: the model's project shows a point per run."""
    from playwright.sync_api import expect, sync_playwright

    served.reset()
    with served.store() as store:
        runs = len(store.list_drift_reports("ai4i"))
    if runs < 3:
        _send(served, _base_rows().head(300))
    for last in (100, 200, 300)[: max(0, 3 - runs)]:  # windows of three sizes: three heights
        done = _mlops(served, "monitor", "--last", str(last), "--no-alert")
        assert done.returncode == 0, done.stderr
    with served.store() as store:
        reports = store.list_drift_reports("ai4i")
    runs = len(reports)
    assert runs >= 3
    # the quality panel: an estimate per run, and a realized point where labels had arrived
    points = sum(
        (r.details["primary_metric"].get(k) is not None)
        for r in reports
        for k in ("estimate", "realized")
    )

    with mlops_ui(served.ws.root, tmp_path) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1300}, reduced_motion="reduce")
        try:
            page.goto(server.url)
            page.get_by_text("ai4i", exact=True).click()
            heading = page.get_by_role("heading", name="Drift share", exact=True)
            card = page.locator(".MuiCard-root").filter(has=heading)
            expect(card).to_have_count(1)
            expect(card.locator(".MuiMarkElement-root")).to_have_count(runs)
            title = "Estimated and realized pr_auc"
            metric = page.locator(".MuiCard-root").filter(
                has=page.get_by_role("heading", name=title, exact=True)
            )
            expect(metric).to_have_count(1)
            expect(metric.locator(".MuiMarkElement-root")).to_have_count(points)
            rows = page.locator(".MuiCard-root").filter(
                has=page.get_by_role("heading", name="Rows per window", exact=True)
            )
            expect(rows.locator(".MuiBarElement-root")).to_have_count(runs)
        finally:
            save_screen(page, tmp_path, "evidently-served-dashboard.png")
            browser.close()
