"""Alerts for a monitor run: which thresholds a summary crosses, and where the alert goes.

Two channels, both open source and both optional:

- a Prefect event `mlops.drift.detected` (what a Prefect automation turns into a retrain run),
  sent when a Prefect API is configured (`PREFECT_API_URL`);
- a Slack-compatible JSON message POSTed to `MLOPS_ALERT_WEBHOOK` (Slack, Mattermost, Rocket.Chat
  and Teams' Slack-compatible hooks take `{"text": ...}`), retried and bounded in time.

Neither ever fails the monitor run: each returns what happened, and the monitor records it.
The webhook's address can carry a secret token, so it never appears in what is returned.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

EVENT = "mlops.drift.detected"
WEBHOOK_ENV = "MLOPS_ALERT_WEBHOOK"


@dataclass(frozen=True)
class Thresholds:
    drift_share: float  # alert when at least this share of input columns drifted
    columns: tuple[str, ...]  # alert when any of these columns drifted, whatever the share
    metric_drop: float  # alert when the estimated primary metric is this much worse


def crossed(summary: Mapping[str, Any], limits: Thresholds) -> list[str]:
    """The reasons to alert, one line each (empty: nothing crossed).

    `summary` holds `drift_share`, `drifted` (column names), `multivariate` (`flagged`, `reasons`),
    and `estimated` / `baseline` with the primary metric's name, value and direction.
    """
    reasons = []
    share = float(summary.get("drift_share") or 0.0)
    drifted = list(summary.get("drifted") or [])
    if drifted and share >= limits.drift_share:
        reasons.append(
            f"drift share {share:.2f} >= {limits.drift_share:.2f} ({', '.join(drifted)})"
        )
    watched = [c for c in drifted if c in limits.columns]
    if watched:
        reasons.append(f"watched column(s) drifted: {', '.join(watched)}")
    multivariate = summary.get("multivariate") or {}
    if multivariate.get("flagged"):
        reasons.extend(multivariate.get("reasons") or ["multivariate check flagged the window"])
    metric = summary.get("primary_metric") or {}
    estimated, baseline = metric.get("estimated"), metric.get("baseline")
    if estimated is not None and baseline is not None:
        drop = (
            (baseline - estimated)
            if metric.get("higher_is_better", True)
            else (estimated - baseline)
        )
        if drop > limits.metric_drop:
            reasons.append(
                f"estimated {metric.get('name')} {estimated:.3f} is {drop:.3f} worse than "
                f"the reference's {baseline:.3f} (limit {limits.metric_drop:.3f})"
            )
    return reasons


def slack_message(summary: Mapping[str, Any], reasons: Sequence[str]) -> dict[str, Any]:
    """A Slack-compatible message: `text` for any receiver, `blocks` for Slack's layout."""
    head = (
        f"Drift on {summary.get('model')} (version {summary.get('version')}): "
        f"report {summary.get('report_id')}, {summary.get('rows')} rows"
    )
    lines = "\n".join(f"- {r}" for r in reasons)
    hint = f"`mlops drift show {summary.get('report_id')}`"
    return {
        "text": f"{head}\n{lines}\nSee {hint}.",
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{head}*"}},
            {"type": "section", "text": {"type": "mrkdwn", "text": lines or "-"}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": f"See {hint}"}]},
        ],
    }


def post_webhook(
    url: str,
    message: Mapping[str, Any],
    *,
    attempts: int = 3,
    timeout_s: float = 5.0,
    budget_s: float = 20.0,
) -> dict[str, Any]:
    """POST `message` as JSON; retried on errors and 5xx/429 with a growing pause, never longer
    than `budget_s` in all. Returns {"channel", "ok", "attempts", "status"/"error"}."""
    import httpx

    started = time.monotonic()
    outcome: dict[str, Any] = {"channel": "webhook", "ok": False, "attempts": 0}
    for attempt in range(1, attempts + 1):
        left = budget_s - (time.monotonic() - started)
        if left <= 0:
            outcome["error"] = f"gave up after {budget_s:.0f} s"
            break
        outcome["attempts"] = attempt
        try:
            r = httpx.post(url, json=dict(message), timeout=min(timeout_s, left))
            outcome["status"] = r.status_code
            if r.status_code < 300:
                outcome["ok"] = True
                outcome.pop("error", None)
                return outcome
            outcome["error"] = f"HTTP {r.status_code}"
            if r.status_code < 500 and r.status_code != 429:
                return outcome  # the receiver refused the message: another try would too
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
            # The exception's text can hold the address (and its token): name the kind only.
            outcome["error"] = type(exc).__name__
            if isinstance(exc, httpx.InvalidURL | ValueError):
                return outcome  # a malformed address: another try fails the same way
        if attempt < attempts:
            left = budget_s - (time.monotonic() - started)
            time.sleep(max(0.0, min(0.5 * 2 ** (attempt - 1), left)))
    return outcome


def emit_event(summary: Mapping[str, Any], reasons: Sequence[str]) -> dict[str, Any]:
    """Send `mlops.drift.detected` to the configured Prefect API and wait until it is sent.

    The resource is the model (`mlops.model.<name>`, labelled with the store's decision
    `mlops.decision`), so an automation can match one model and only the alerts that may start
    a retrain; the payload is the summary with the reasons. Without `PREFECT_API_URL` nothing
    is sent (the monitor does not start a temporary server that no automation watches)."""
    from prefect.settings import PREFECT_API_URL

    outcome: dict[str, Any] = {"channel": "prefect", "ok": False, "event": EVENT}
    if not PREFECT_API_URL.value():
        outcome["error"] = "PREFECT_API_URL is not set"
        return outcome
    from prefect.events import Event
    from prefect.events.clients import get_events_client

    model = str(summary.get("model"))
    event = Event(
        event=EVENT,
        resource={
            "prefect.resource.id": f"mlops.model.{model}",
            "prefect.resource.name": model,
            # What the store decided the alert causes (retrain | suppressed): the label the
            # loop's trigger matches, so a suppressed alert starts nothing.
            "mlops.decision": str((summary.get("drift_event") or {}).get("decision", "none")),
        },
        payload={**summary, "reasons": list(reasons)},
    )

    async def send() -> None:
        async with get_events_client(reconnection_attempts=2) as client:
            await client.emit(event)

    try:
        asyncio.run(asyncio.wait_for(send(), timeout=20))
    except Exception as exc:
        outcome["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        return outcome
    outcome.update(ok=True, id=str(event.id))
    return outcome


def send_alerts(summary: Mapping[str, Any], reasons: Sequence[str]) -> list[dict[str, Any]]:
    """Every configured channel, each attempted whatever the other did."""
    sent = [emit_event(summary, reasons)]
    url = os.environ.get(WEBHOOK_ENV, "").strip()
    if url:
        sent.append(post_webhook(url, slack_message(summary, reasons)))
    return sent
