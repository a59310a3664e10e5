"""Alert thresholds, the webhook's retries and bounds (a local receiver stands in for Slack),
and the monitor's small parsers."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from mlops.errors import MlopsError
from monitoring.alerts import Thresholds, crossed, post_webhook, slack_message

LIMITS = Thresholds(drift_share=0.3, columns=("Torque [Nm]",), metric_drop=0.05)


def _summary(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": "ai4i",
        "version": 3,
        "report_id": 7,
        "rows": 5000,
        "drift_share": 0.0,
        "drifted": [],
        "primary_metric": {"name": "pr_auc", "higher_is_better": True, "baseline": 0.7},
    }
    base.update(kw)
    return base


def test_nothing_crossed_means_no_alert() -> None:
    assert crossed(_summary(), LIMITS) == []
    # one column of six is below the share and not watched
    assert crossed(_summary(drift_share=1 / 6, drifted=["Type"]), LIMITS) == []


def test_each_threshold_gives_its_reason() -> None:
    share = crossed(_summary(drift_share=2 / 6, drifted=["A", "B"]), LIMITS)
    assert len(share) == 1 and "drift share 0.33 >= 0.30 (A, B)" in share[0]
    watched = crossed(_summary(drift_share=1 / 6, drifted=["Torque [Nm]"]), LIMITS)
    assert watched == ["watched column(s) drifted: Torque [Nm]"]
    flagged = {"flagged": True, "reasons": ["multivariate check: error 2.1 outside [1.0, 1.2]"]}
    assert crossed(_summary(multivariate=flagged), LIMITS) == flagged["reasons"]
    metric = {"name": "pr_auc", "higher_is_better": True, "baseline": 0.7, "estimated": 0.6}
    drop = crossed(_summary(primary_metric=metric), LIMITS)
    assert len(drop) == 1 and "estimated pr_auc 0.600 is 0.100 worse" in drop[0]
    # lower is better (rmse): a rise is the drop
    rmse = {"name": "rmse", "higher_is_better": False, "baseline": 1.0, "estimated": 1.2}
    assert len(crossed(_summary(primary_metric=rmse), LIMITS)) == 1
    rmse_better = {**rmse, "estimated": 0.8}
    assert crossed(_summary(primary_metric=rmse_better), LIMITS) == []


class _Receiver:
    def __init__(self, statuses: list[int], delay: float = 0.0) -> None:
        self.statuses, self.delay, self.got = list(statuses), delay, []  # type: ignore[var-annotated]
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.got.append(json.loads(body))
                time.sleep(outer.delay)
                status = outer.statuses.pop(0) if outer.statuses else 200
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook/T1/B2/secret-token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[type[_Receiver]]:
    made: list[_Receiver] = []

    def make(*a: Any, **kw: Any) -> _Receiver:
        r = _Receiver(*a, **kw)
        made.append(r)
        return r

    yield make  # type: ignore[misc]
    for r in made:
        r.server.shutdown()


def test_webhook_retries_a_server_error_then_delivers(receiver: Any) -> None:
    r = receiver([503, 500, 200])
    message = slack_message(_summary(), ["drift share 0.50 >= 0.30 (A)"])
    out = post_webhook(r.url, message, attempts=3, budget_s=10)
    assert out == {"channel": "webhook", "ok": True, "attempts": 3, "status": 200}
    assert len(r.got) == 3 and r.got[-1]["text"].startswith("Drift on ai4i (version 3)")
    assert "secret-token" not in json.dumps(out)


def test_webhook_does_not_retry_a_refusal(receiver: Any) -> None:
    r = receiver([404])
    out = post_webhook(r.url, {"text": "x"}, attempts=3)
    assert out["ok"] is False and out["attempts"] == 1 and out["error"] == "HTTP 404"


def test_webhook_is_bounded_in_time_and_never_raises(receiver: Any) -> None:
    r = receiver([], delay=2.0)  # answers, but too late
    started = time.monotonic()
    out = post_webhook(r.url, {"text": "x"}, attempts=5, timeout_s=0.3, budget_s=1.0)
    assert time.monotonic() - started < 3.0
    assert out["ok"] is False and out["error"] in ("ReadTimeout", "gave up after 1 s")
    assert "secret-token" not in json.dumps(out)
    # nothing listens: a connection error, reported, not raised
    closed = post_webhook("http://127.0.0.1:9/hook", {"text": "x"}, attempts=2, budget_s=2)
    assert closed["ok"] is False and closed["error"] == "ConnectError"


def test_since_takes_durations_and_times() -> None:
    from pipelines.monitor import parse_since

    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert parse_since("30m", now) == now - timedelta(minutes=30)
    assert parse_since("2d", now) == now - timedelta(days=2)
    assert parse_since("2026-12-01T10:00:00", now) == datetime(2026, 12, 1, 10, tzinfo=UTC)
    with pytest.raises(MlopsError, match="--since 'yesterday'"):
        parse_since("yesterday", now)


def test_feedback_file_errors_name_the_row(tmp_path: Path) -> None:
    from pipelines.feedback import read_feedback

    good = tmp_path / "labels.csv"
    good.write_text("request_id,label\nr1,1\nr2,0\n")
    assert read_feedback(good) == [("r1", 0, "1"), ("r2", 0, "0")]
    gap = tmp_path / "gap.csv"
    gap.write_text("request_id,record,label\nr1,0,1\nr2,1,\n")
    with pytest.raises(MlopsError, match=r"gap.csv row 3: 'label' is empty"):
        read_feedback(gap)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("id,label\nr1,1\n")
    with pytest.raises(MlopsError, match=r"wrong.csv: no column 'request_id'"):
        read_feedback(wrong)
    negative = tmp_path / "neg.csv"
    negative.write_text("request_id,record,label\nr1,-1,1\n")
    with pytest.raises(MlopsError, match="row 2: 'record' -1 is negative"):
        read_feedback(negative)


def test_labels_have_one_text_however_they_were_read() -> None:
    """A CSV target with a gap is read as floats (classes 0.0, 1.0): feedback of 1, "1" or
    "1.0" names the same class, and a text label stays as it is."""
    import numpy as np

    from pipelines.feedback import label_text

    assert {label_text(v) for v in (1, 1.0, "1", "1.0", np.float64(1.0), np.int64(1))} == {"1"}
    assert label_text(0.5) == "0.5" and label_text(" yes ") == "yes"


def test_feedback_keeps_request_ids_as_text(tmp_path: Path) -> None:
    from pipelines.feedback import read_feedback

    path = tmp_path / "labels.csv"
    path.write_text("request_id,record,label\n000123,0,1\n000124,1.0,0\n")
    assert read_feedback(path) == [("000123", 0, "1"), ("000124", 1, "0")]
    path.write_text("request_id,record,label\nr1,1.5,1\n")
    with pytest.raises(MlopsError, match=r"1\.5 is not a record index"):
        read_feedback(path)
