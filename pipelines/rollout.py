"""Progressive delivery: a staged version goes to canary step by step, is compared with
production on the same window at each step, and is rolled back automatically when worse.

    result = progressive_rollout(ws, store, params, "ai4i:4")

At each share in `rollout.steps`, once the canary has answered `rollout.min_requests` requests
(read from the prediction log the servers write), the window since the step began is compared:

- error rate: the canary's failed attempts (answered by production instead, so the client never
  sees them) per canary request, against production's (always 0 in the log: a failing
  production request is an HTTP error the client sees; the servers' /metrics count those);
- p99 latency per request, canary against production;
- disagreement rate: canary records whose answer production would have given differently
  (the review queue the servers fill), per canary record;
- the estimated primary metric (CBPE or DLE, as monitoring estimates it): each version scored
  on the window's inputs and calibrated on its own held-out reference.

Worse beyond the `rollout:` thresholds -> the canary is cleared with the numbers in the
deployment audit, and the result says why; otherwise the next step, and finally promotion.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from mlops.errors import MlopsError
from mlops.params import Params
from mlops.predictions import FAILED_CANARY, inputs_of, read_log
from mlops.settings import Workspace
from mlops.store import ModelRecord, Store

ACTOR = "rollout"


@dataclass(frozen=True)
class StepReport:
    share: float
    canary_requests: int
    production_requests: int
    canary_error_rate: float
    canary_p99_ms: float
    production_p99_ms: float
    disagreement_rate: float
    metric: str
    canary_estimate: float | None
    production_estimate: float | None
    worse: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RolloutResult:
    candidate: str
    outcome: str  # promoted | rolled_back
    steps: list[StepReport]
    reason: str


def progressive_rollout(
    ws: Workspace,
    store: Store,
    params: Params,
    ref: str,
    *,
    say: Callable[[str], None] = lambda _msg: None,
    sleep: Callable[[float], None] = time.sleep,
) -> RolloutResult:
    """Canary `ref` at each of `rollout.steps`, compare, then promote it or roll it back."""
    from pipelines.gate import promote

    rp = params.rollout
    candidate = store.get_model(ref)
    production = store.production_model(candidate.name)
    if production is None:
        raise MlopsError(
            f"{candidate.name} has no production version to compare with: promote "
            f"{candidate.ref} (`mlops promote`)"
        )
    if production.id == candidate.id:
        raise MlopsError(f"{candidate.ref} is already production")
    steps: list[StepReport] = []
    for share in rp.steps:
        began = datetime.now(UTC)
        store.set_canary(candidate.ref, share, actor=ACTOR, reason=f"rollout step {share:.0%}")
        say(f"{candidate.ref}: canary at {share:.0%}, waiting for {rp.min_requests} requests")
        window = _wait_for_traffic(ws, candidate, began, rp.min_requests, rp.step_timeout_s, sleep)
        if window is None:
            reason = (
                f"fewer than {rp.min_requests} canary requests within {rp.step_timeout_s:g} s at "
                f"{share:.0%}: not enough traffic to judge"
            )
            return _roll_back(store, candidate, steps, reason, say)
        report = compare(ws, store, params, candidate, production, window, share)
        steps.append(report)
        say(_line(report))
        if report.worse:
            return _roll_back(store, candidate, steps, "; ".join(report.worse), say)
    promote(
        store,
        candidate.ref,
        "production",
        reason=f"rollout: every step held ({', '.join(f'{s:.0%}' for s in rp.steps)})",
        actor=ACTOR,
    )
    say(f"{candidate.ref}: promoted to production")
    return RolloutResult(candidate.ref, "promoted", steps, "every step within the thresholds")


def live_traffic(ws: Workspace, name: str, within_s: float = 60.0) -> bool:
    """Whether servers of `name` answered requests in the last `within_s` seconds."""
    from datetime import timedelta

    since = datetime.now(UTC) - timedelta(seconds=within_s)
    rows = read_log(ws.predictions_dir, name, since=since)
    return bool((rows["route"] == "production").any()) if not rows.empty else False


def _roll_back(
    store: Store,
    candidate: ModelRecord,
    steps: list[StepReport],
    reason: str,
    say: Callable[[str], None],
) -> RolloutResult:
    numbers = steps[-1].to_dict() if steps else {}
    store.clear_deployment(
        candidate.name, "canary", actor=ACTOR, reason=f"rollback: {reason} | {numbers}"
    )
    say(f"{candidate.ref}: rolled back ({reason})")
    return RolloutResult(candidate.ref, "rolled_back", steps, reason)


def _wait_for_traffic(
    ws: Workspace,
    candidate: ModelRecord,
    since: datetime,
    min_requests: int,
    timeout_s: float,
    sleep: Callable[[float], None],
) -> pd.DataFrame | None:
    """The log since `since` once the canary answered `min_requests` requests (None: timeout).
    The servers flush their logs every serve.log_flush_s, so this polls."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = read_log(ws.predictions_dir, candidate.name, since=since)
        # A canary that fails is still asked: its failed attempts count as its requests.
        tried = rows["route"].isin(("canary", FAILED_CANARY))
        canary = rows[tried & (rows["version"] == candidate.version)]
        if canary["request_id"].nunique() >= min_requests:
            return rows
        if time.monotonic() > deadline:
            return None
        sleep(1.0)


def compare(
    ws: Workspace,
    store: Store,
    params: Params,
    candidate: ModelRecord,
    production: ModelRecord,
    window: pd.DataFrame,
    share: float,
) -> StepReport:
    """The canary against production on one window of the log."""
    rp = params.rollout
    mine = window[window["version"] == candidate.version]
    failed_ids = set(mine[mine["route"] == FAILED_CANARY]["request_id"])
    # Production's own requests: those it answered for a failed canary took both attempts.
    theirs = window[
        (window["version"] == production.version)
        & (window["route"] == "production")
        & ~window["request_id"].isin(failed_ids)
    ]
    canary = mine[mine["route"] == "canary"]
    failed = len(failed_ids)
    canary_requests = canary["request_id"].nunique() + failed
    error_rate = failed / canary_requests if canary_requests else 0.0
    p99 = {k: _p99(v) for k, v in (("canary", canary), ("production", theirs))}
    asked = set(canary["request_id"].astype(str))
    disagreements = sum(
        1
        for r in store.list_reviews(candidate.name, status=None)
        if r.other_version_id == candidate.id and r.request_id in asked
    )
    disagreement_rate = disagreements / len(canary) if len(canary) else 0.0
    metric, canary_est, production_est, higher = _estimates(
        ws, store, params, candidate, production, window
    )
    worse = []
    if error_rate > rp.max_error_rate:
        worse.append(f"canary error rate {error_rate:.3f} > {rp.max_error_rate:g}")
    if p99["canary"] > rp.max_p99_ratio * p99["production"] + rp.p99_slack_ms:
        worse.append(
            f"canary p99 {p99['canary']:.1f} ms > {rp.max_p99_ratio:g} x production's "
            f"{p99['production']:.1f} ms + {rp.p99_slack_ms:g} ms"
        )
    if disagreement_rate > rp.max_disagreement:
        worse.append(
            f"canary disagrees with production on {disagreement_rate:.1%} of records "
            f"(> {rp.max_disagreement:.1%})"
        )
    if canary_est is not None and production_est is not None:
        drop = production_est - canary_est if higher else canary_est - production_est
        if drop > rp.max_metric_drop:
            worse.append(
                f"estimated {metric} {canary_est:.3f} is {drop:.3f} worse than production's "
                f"{production_est:.3f} (> {rp.max_metric_drop:g})"
            )
    return StepReport(
        share=share,
        canary_requests=canary_requests,
        production_requests=int(theirs["request_id"].nunique()),
        canary_error_rate=error_rate,
        canary_p99_ms=p99["canary"],
        production_p99_ms=p99["production"],
        disagreement_rate=disagreement_rate,
        metric=metric,
        canary_estimate=canary_est,
        production_estimate=production_est,
        worse=worse,
    )


def _p99(rows: pd.DataFrame) -> float:
    """p99 of the per-request latency (a request's records share it)."""
    if rows.empty:
        return 0.0
    per_request = rows.drop_duplicates("request_id")["latency_ms"].to_numpy(dtype=np.float64)
    return float(np.percentile(per_request, 99))


def _estimates(
    ws: Workspace,
    store: Store,
    params: Params,
    candidate: ModelRecord,
    production: ModelRecord,
    window: pd.DataFrame,
) -> tuple[str, float | None, float | None, bool]:
    """Each version's estimated primary metric on the window's inputs (the requests either
    answered), each calibrated on its own held-out reference."""
    from pipelines.artifact import load_predictor
    from pipelines.evaluate import primary_metric
    from pipelines.gate import model_dir
    from pipelines.monitor import estimate_quality, load_reference, positive_index

    served = window[window["route"].isin(("production", "canary"))]
    metric, higher = "", True
    out: list[float | None] = []
    for record in (candidate, production):
        predictor = load_predictor(model_dir(ws, record))
        metric, higher = primary_metric(predictor.spec.task, params.evaluate)
        features = list(predictor.spec.features)
        current = inputs_of(served)[features]
        reference = load_reference(ws, store, record, predictor, params.monitor)
        positive = (
            positive_index(record, list(predictor.preprocessor.classes))
            if predictor.spec.task == "classification"
            else None
        )
        estimate = estimate_quality(
            predictor, reference, current, predictor.scores(current), positive, params.monitor.seed
        )
        point = estimate.metrics.get(metric) if estimate is not None else None
        out.append(point.value if point is not None else None)
    return metric, out[0], out[1], higher


def _line(r: StepReport) -> str:
    est = (
        f"{r.metric} {r.canary_estimate:.3f} vs {r.production_estimate:.3f}"
        if r.canary_estimate is not None and r.production_estimate is not None
        else f"{r.metric} not estimated"
    )
    verdict = "worse: " + "; ".join(r.worse) if r.worse else "holds"
    return (
        f"  {r.share:.0%}: {r.canary_requests} canary requests, errors {r.canary_error_rate:.3f}, "
        f"p99 {r.canary_p99_ms:.1f} vs {r.production_p99_ms:.1f} ms, disagreement "
        f"{r.disagreement_rate:.1%}, {est} -> {verdict}"
    )
