"""The monitor step: a window of served traffic against the serving version's reference.

    result = monitor(ws, store, params, name="ai4i", last=5000)

1. The window: rows of the prediction log (production and canary answers; shadow answers
   reached nobody), the newest `last` or those since a time.
2. The reference: a sample of the production version's own data, held-out rows first (they
   carry labels the model never trained on), scored by that version once and kept as Parquet
   under MLOPS_HOME; its size is in the report.
3. Evidently's report: per-column drift of the inputs, drift of the served score, a data
   summary. Windows larger than `monitor.max_rows` are sampled (stated in the summary).
4. Quality: estimated without labels (CBPE or DLE, `monitoring.estimate`), checked by the
   multivariate reconstruction test and the reference's ranges, and realized from the labels
   that arrived (`mlops feedback`, resolved reviews) where there are enough.
5. The summary goes to the store; crossed thresholds send alerts (`monitoring.alerts`).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mlops.errors import MlopsError
from mlops.io import atomic_write_bytes
from mlops.params import MonitorParams, Params, PrepareParams
from mlops.predictions import SERVED_ROUTES, inputs_of, read_log
from mlops.settings import Workspace
from mlops.store import DriftRecord, ModelRecord, Store
from pipelines.artifact import Predictor, load_predictor
from pipelines.evaluate import evaluate_scores, primary_metric
from pipelines.sources import DatasetSpec

if TYPE_CHECKING:
    from monitoring.estimate import Estimate
    from monitoring.multivariate import MultivariateResult

MIN_CALIBRATION_ROWS = 200  # held-out reference rows below which no estimate is made
MAX_SEGMENTS = 10
# The served score beside the inputs in the drift report: a name no data set's column has.
SCORE = "(served score)"
SPLIT = "_split"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """`30m`, `6h`, `2d`, `1w` before now, or an ISO time (UTC when it names no zone)."""
    now = now or datetime.now(UTC)
    m = _DURATION.match(value)
    if m:
        return now - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    try:
        at = datetime.fromisoformat(value.strip())
    except ValueError:
        raise MlopsError(
            f"--since {value!r}: expected a duration (30m, 6h, 2d, 1w) or an ISO time"
        ) from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Reference:
    """The version's reference: raw inputs, labels, split, and the version's scores."""

    frame: pd.DataFrame  # features + target + _split
    scores: np.ndarray  # predictor.scores of frame: (n, classes) or (n,)
    path: Path

    @property
    def held_out(self) -> np.ndarray:
        return (self.frame[SPLIT] != "train").to_numpy()


@dataclass
class MonitorResult:
    report: DriftRecord
    html: Path
    json: Path
    summary: dict[str, Any]
    reasons: list[str] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)


def training_run_id(store: Store, record: ModelRecord) -> int | None:
    """The run that trained a version, or its parent's for a compressed child."""
    seen = set()
    current: ModelRecord | None = record
    while current is not None and current.id not in seen:
        if current.run_id is not None:
            return current.run_id
        seen.add(current.id)
        current = store.get_model(current.parent_id) if current.parent_id else None
    return None


def reference_path(ws: Workspace, record: ModelRecord) -> Path:
    return ws.home / "monitoring" / record.name / f"reference-v{record.version}.parquet"


def load_reference(
    ws: Workspace, store: Store, record: ModelRecord, predictor: Predictor, params: MonitorParams
) -> Reference:
    """The stored reference of `record`, built (and stored) on first use."""
    path = reference_path(ws, record)
    spec = predictor.spec
    if path.is_file():
        frame = pd.read_parquet(path)
    else:
        frame = build_reference(ws, store, record, spec, params)
        buf = frame.to_parquet(index=False)
        assert buf is not None
        atomic_write_bytes(path, buf)
    return Reference(frame=frame, scores=predictor.scores(frame), path=path)


def build_reference(
    ws: Workspace, store: Store, record: ModelRecord, spec: DatasetSpec, params: MonitorParams
) -> pd.DataFrame:
    """Up to `params.reference_rows` rows of the data `record` was built from, split as its
    training split them; held-out (val, test) rows first, then training rows."""
    from pipelines.prepare import prepare
    from pipelines.validate import load_frame

    if not record.batch_ids:
        raise MlopsError(f"{record.ref} records no batches: no reference to monitor against")
    frames = {b: load_frame(ws, store, store.get_batch(b)) for b in record.batch_ids}
    run_id = training_run_id(store, record)
    raw = store.get_run(run_id).params.get("prepare", {}) if run_id is not None else {}
    prepare_params = PrepareParams.model_validate(raw) if raw else PrepareParams()
    data = prepare(frames, spec, prepare_params)
    keep = [*spec.features, spec.target]
    parts = [data.split(s)[keep].assign(**{SPLIT: s}) for s in ("val", "test", "train")]
    held_out = pd.concat(parts[:2], ignore_index=True)
    rng = np.random.default_rng(params.seed)
    if len(held_out) >= params.reference_rows:
        return held_out.iloc[np.sort(rng.choice(len(held_out), params.reference_rows, False))]
    train = parts[2]
    n = min(len(train), params.reference_rows - len(held_out))
    picked = train.iloc[np.sort(rng.choice(len(train), n, replace=False))]
    return pd.concat([held_out, picked], ignore_index=True)


def load_window(
    ws: Workspace, name: str, *, since: datetime | None, last: int | None
) -> pd.DataFrame:
    """Served rows of `name` (shadow answers excluded), oldest first."""
    if since is None and last is None:
        raise MlopsError("monitor: give a window (--since or --last)")
    # Read generously when counting from the end: shadow rows are dropped after reading.
    rows = read_log(ws.predictions_dir, name, since=since, last=last * 2 if last else None)
    if rows.empty:
        return rows
    served = rows[rows["route"].isin(SERVED_ROUTES)]
    return (served.tail(last) if last else served).reset_index(drop=True)


def served_score(task: str, scores: np.ndarray, positive: int | None) -> np.ndarray:
    """The score the log keeps, from full scores: P(positive) for a binary model, the top
    probability for a multi-class one, the prediction for regression."""
    if task != "classification":
        return np.asarray(scores, dtype=np.float64).reshape(-1)
    if positive is not None and scores.shape[1] == 2:
        return scores[:, positive]
    return scores.max(axis=1)


def _sample(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    if len(frame) <= n:
        return frame
    rng = np.random.default_rng(seed)
    return frame.iloc[np.sort(rng.choice(len(frame), n, replace=False))]


def window_labels(store: Store, name: str, window: pd.DataFrame) -> pd.Series:
    """The label of each window row, where one arrived (NaN elsewhere); by request id and
    record index."""
    labels = store.list_labels(name)
    if not labels:
        return pd.Series([np.nan] * len(window), index=window.index, dtype=object)
    known = {(lab.request_id, lab.record): lab.value for lab in labels}
    keys = zip(window["request_id"].astype(str), window["record"].astype(int), strict=True)
    return pd.Series([known.get(k, np.nan) for k in keys], index=window.index, dtype=object)


def _labels_as(values: pd.Series, classes: list[Any], task: str) -> np.ndarray:
    """Labels as the model's classes (text from the store -> the class it names)."""
    if task == "regression":
        return pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    from pipelines.feedback import label_text

    by_text = {label_text(c): c for c in classes}
    # A label outside the classes (given for an older version with other classes) is None:
    # the callers leave it out rather than fail the whole run.
    return np.asarray([by_text.get(label_text(v)) for v in values], dtype=object)


def _usable_labels(
    labels: pd.Series, classes: list[Any], task: str
) -> tuple[np.ndarray, np.ndarray]:
    """Every row's label as the model's class (or number), and which rows have a usable one."""
    values = _labels_as(labels, classes, task)
    present = labels.notna().to_numpy()
    if task == "regression":
        return values, present & ~np.isnan(values.astype(np.float64))
    return values, present & np.asarray([v is not None for v in values], dtype=bool)


def monitor(
    ws: Workspace,
    store: Store,
    params: Params,
    *,
    name: str,
    since: datetime | None = None,
    last: int | None = None,
    alert: bool = True,
    now: datetime | None = None,
) -> MonitorResult:
    """One monitor run for model `name`: the report, its summary in the store, the alerts."""
    from monitoring import alerts, drift, ui
    from monitoring.estimate import mark_unreliable

    mp = params.monitor
    record = store.production_model(name)
    if record is None:
        raise MlopsError(f"{name} has no production version: nothing is served to monitor")
    if since is None and last is None:
        last = mp.window_rows
    window = load_window(ws, name, since=since, last=last)
    if len(window) < mp.min_rows:
        raise MlopsError(
            f"monitor {name}: {len(window)} served row(s) in the window, fewer than "
            f"monitor.min_rows={mp.min_rows} (serve more traffic or widen --since/--last)"
        )
    from pipelines.gate import model_dir

    predictor = load_predictor(model_dir(ws, record))
    spec, pre = predictor.spec, predictor.preprocessor
    reference = load_reference(ws, store, record, predictor, mp)
    task = spec.task
    classes = list(pre.classes)
    positive = positive_index(record, classes) if task == "classification" else None

    inputs = inputs_of(window)
    missing = [c for c in spec.features if c not in inputs.columns]
    if missing:
        raise MlopsError(f"monitor {name}: the prediction log has no input column(s) {missing}")
    current = inputs[list(spec.features)].copy()
    current[SCORE] = window["score"].to_numpy(dtype=np.float64)
    ref_frame = reference.frame[list(spec.features)].copy()
    ref_frame[SCORE] = served_score(task, reference.scores, positive)
    sampled = _sample(current, mp.max_rows, mp.seed)
    numerical = [c for c in spec.features if c not in spec.categorical]
    result, snapshot = drift.compare(
        _sample(ref_frame, mp.max_rows, mp.seed),
        sampled,
        numerical=[*numerical, SCORE],
        categorical=list(spec.categorical),
        summary=True,
    )
    inputs_drift = [c for c in result.columns if c.column != SCORE]
    drifted = [c.column for c in inputs_drift if c.drifted]
    share = len(drifted) / len(inputs_drift) if inputs_drift else 0.0
    prediction = next(c for c in result.columns if c.column == SCORE)

    # Quality: the production version on the window's inputs, against the reference.
    window_scores = predictor.scores(current[list(spec.features)])
    metric, higher = primary_metric(task, params.evaluate)
    baseline = _metrics(task, reference, spec.target, classes, positive)
    labels = window_labels(store, name, window)
    quality = _quality(labels, window_scores, task, classes, positive, mp.min_labels)
    check = _multivariate(reference, current, numerical)
    estimate = estimate_quality(predictor, reference, current, window_scores, positive, mp.seed)
    if estimate is not None and check is not None:
        estimate = mark_unreliable(estimate, check)
    estimated = estimate.to_dict() if estimate is not None else {}
    point = estimate.metrics.get(metric) if estimate is not None else None
    reliable = bool(estimate.reliable) if estimate is not None else None

    end = pd.Timestamp(window["ts"].max()).to_pydatetime()
    start = pd.Timestamp(window["ts"].min()).to_pydatetime()
    ran = now or datetime.now(UTC)
    stamp = ran.strftime("%Y%m%dT%H%M%S")
    stem = f"{name}-v{record.version}-{stamp}-{uuid.uuid4().hex[:6]}"
    folder = ws.home / "monitoring" / name / "reports"
    html, js = drift.save(snapshot, folder, stem)
    quality_html = None
    if metric in quality:  # enough labels: Evidently's quality report beside the drift one
        quality_html, _ = drift.save(
            _quality_snapshot(
                task, reference, spec.target, labels, window_scores, classes, positive
            ),
            folder,
            f"{stem}-quality",
        )
    summary: dict[str, Any] = {
        "model": name,
        "version": record.version,
        "window": {"start": start.isoformat(), "end": end.isoformat()},
        "rows": len(window),
        "rows_tested": len(sampled),
        "reference_rows": len(reference.frame),
        "drift_share": share,
        "drifted": drifted,
        "prediction_drift": {
            "method": prediction.method,
            "score": prediction.score,
            "drifted": prediction.drifted,
        },
        "primary_metric": {
            "name": metric,
            "higher_is_better": higher,
            "baseline": baseline.get(metric),
            # An unreliable estimate is reported, not alerted on: its reasons are the alerts.
            "estimated": point.value if point is not None and reliable else None,
            "estimate": point.value if point is not None else None,
            "band": [point.lower, point.upper] if point is not None else None,
            "reliable": reliable,
            "realized": quality.get(metric),
            "no_estimate": no_estimate_reason(reference, params.monitor.reference_rows)
            if estimate is None
            else None,
        },
        "multivariate": check.to_dict() if check is not None else None,
        "estimate_reasons": list(estimate.reasons) if estimate is not None else [],
    }
    details = {
        "columns": [c.__dict__ for c in inputs_drift],
        "prediction": prediction.__dict__,
        "reference": {"rows": len(reference.frame), "metrics": baseline},
        "sampled": len(sampled) < len(current),
        "primary_metric": summary["primary_metric"],
        "prediction_drift": summary["prediction_drift"],
        "multivariate": summary["multivariate"],
        "quality_report": ws.home_relative(quality_html) if quality_html else None,
    }
    metric_info = summary["primary_metric"]
    details["evidently_snapshot"] = ui.add_run(
        ws.evidently_dir,
        name,
        snapshot,
        timestamp=ran,  # one point per monitor run, even when two runs share a window
        values={
            "drift_share": share,
            "drifted_columns": len(drifted),
            "rows": len(window),
            f"estimated_{metric}": metric_info["estimate"],
            f"realized_{metric}": metric_info["realized"],
        },
        tags=[f"v{record.version}"],
    )
    reasons = alerts.crossed(
        summary,
        alerts.Thresholds(
            drift_share=mp.alert_drift_share,
            columns=tuple(mp.alert_columns),
            metric_drop=mp.alert_metric_drop,
        ),
    )
    saved = store.add_drift_report(
        model_version_id=record.id,
        reference=ws.home_relative(reference.path),
        rows=len(window),
        drift_share=share,
        drifted=bool(reasons),
        details=details,
        path=ws.home_relative(html),
        model_name=name,
        window_start=start,
        window_end=end,
        estimated=estimated,
        realized=quality,
        json_path=ws.home_relative(js),
    )
    summary["report_id"] = saved.id
    sent: list[dict[str, Any]] = []
    if reasons and alert:
        # What the alert may cause is decided here, in the store, before anyone hears of it:
        # the event carries the decision, and the Prefect trigger only runs a retrain for one.
        loop = params.loop
        event = store.record_drift_event(
            name,
            drift_report_id=saved.id,
            cooldown_s=loop.cooldown_s,
            max_retrains=loop.max_retrains,
            window_s=loop.window_s,
        )
        summary["drift_event"] = {
            "id": event.id,
            "decision": event.decision,
            "reason": event.reason,
        }
        sent = alerts.send_alerts(summary, reasons)
        saved = store.set_drift_alerts(saved.id, [{"reasons": reasons}, *sent])
    return MonitorResult(saved, html, js, summary, reasons, sent)


def _multivariate(
    reference: Reference, current: pd.DataFrame, numerical: list[str]
) -> MultivariateResult | None:
    """The PCA reconstruction and range check (None: fewer than two numerical inputs)."""
    from monitoring.multivariate import MIN_CHUNKS, ReconstructionCheck

    if len(numerical) < 2 or len(reference.frame) < 2 * MIN_CHUNKS:
        return None
    return ReconstructionCheck.fit(reference.frame, numerical).check(current)


def estimate_quality(
    predictor: Predictor,
    reference: Reference,
    current: pd.DataFrame,
    window_scores: np.ndarray,
    positive: int | None,
    seed: int,
) -> Estimate | None:
    """Quality without labels, calibrated on the reference's held-out rows: CBPE for a
    classifier, DLE for a regression (None: too few held-out rows to calibrate on)."""
    from monitoring.estimate import CBPE, DLE

    spec, pre = predictor.spec, predictor.preprocessor
    held = reference.held_out
    if held.sum() < MIN_CALIBRATION_ROWS:
        return None
    frame = reference.frame[held]
    features = list(spec.features)
    if spec.task == "classification":
        index = {str(c): i for i, c in enumerate(pre.classes)}
        labels = np.asarray([index[str(v)] for v in frame[spec.target]], dtype=np.int64)
        segment = _segment_column(frame, spec)
        cbpe = CBPE.fit(
            reference.scores[held],
            labels,
            positive,
            segments=frame[segment].astype(str).to_numpy() if segment else None,
            seed=seed,
        )
        return cbpe.estimate(
            window_scores, segments=current[segment].astype(str).to_numpy() if segment else None
        )
    dle = DLE.fit(
        pre.transform(frame[features]),
        reference.scores[held],
        frame[spec.target].to_numpy(dtype=np.float64),
    )
    return dle.estimate(pre.transform(current[features]), window_scores)


def no_estimate_reason(reference: Reference, reference_rows: int) -> str:
    """Why a window has no estimated quality, and what size of data set would give one."""
    held = int(reference.held_out.sum())
    why = (
        f"the reference holds {held} held-out rows (the version's validation and test splits); "
        f"calibrating the estimate needs {MIN_CALIBRATION_ROWS}"
    )
    if len(reference.frame) < reference_rows and held:  # the reference is the whole data set
        need = -(-MIN_CALIBRATION_ROWS * len(reference.frame) // held)
        why += f": train on about {need:,} rows or more"
    return why


def _segment_column(frame: pd.DataFrame, spec: DatasetSpec) -> str | None:
    """The categorical input with the fewest categories (at most MAX_SEGMENTS): CBPE calibrates
    within each, so a change in their mix does not bias the estimate (BENCHMARKS.md)."""
    counts = {c: frame[c].nunique() for c in spec.categorical}
    fit = [c for c, n in counts.items() if 1 < n <= MAX_SEGMENTS]
    return min(fit, key=lambda c: counts[c]) if fit else None


def positive_index(record: ModelRecord, classes: list[Any]) -> int | None:
    if len(classes) != 2:
        return None
    named = record.metrics.get("positive_class")
    texts = [str(c) for c in classes]
    if named is not None and str(named) in texts:
        return texts.index(str(named))
    return 1


def _metrics(
    task: str, reference: Reference, target: str, classes: list[Any], positive: int | None
) -> dict[str, Any]:
    """The version's metrics on the reference's held-out rows: what the window is held to."""
    held = reference.held_out
    if not held.any():
        return {}
    frame = reference.frame[held]
    pos = classes[positive] if positive is not None else None
    return evaluate_scores(task, frame[target].to_numpy(), reference.scores[held], classes, pos)


def _quality(
    labels: pd.Series,
    scores: np.ndarray,
    task: str,
    classes: list[Any],
    positive: int | None,
    min_labels: int,
) -> dict[str, Any]:
    """Realized quality on the window's labelled rows (empty below `min_labels`)."""
    y, known = _usable_labels(labels, classes, task)
    if known.sum() < min_labels:
        return {"labelled": int(known.sum())} if known.any() else {}
    y = y[known]
    pos = classes[positive] if positive is not None else None
    out = evaluate_scores(task, y, scores[known], classes, pos)
    out["labelled"] = int(known.sum())
    return out


def _quality_snapshot(
    task: str,
    reference: Reference,
    target: str,
    labels: pd.Series,
    window_scores: np.ndarray,
    classes: list[Any],
    positive: int | None,
) -> Any:
    """Evidently's quality report: the window's labelled rows against the reference's held-out
    rows, both as the serving version scored them."""
    from monitoring.quality import PREDICTION, PROBA, TARGET, quality_report

    held = reference.held_out
    truth, known = _usable_labels(labels, classes, task)

    def frame(truth: Any, scores: np.ndarray) -> pd.DataFrame:
        if task == "regression":
            return pd.DataFrame({TARGET: np.asarray(truth, dtype=np.float64), PREDICTION: scores})
        out = pd.DataFrame(
            {
                TARGET: [str(v) for v in truth],
                PREDICTION: [str(classes[i]) for i in scores.argmax(axis=1)],
            }
        )
        if positive is not None:
            out[PROBA] = scores[:, positive]
        return out

    truth = truth[known]
    return quality_report(
        frame(reference.frame[target][held].to_numpy(), reference.scores[held]),
        frame(truth, window_scores[known]),
        task=task,
        positive=str(classes[positive]) if positive is not None else None,
    )


def summary_markdown(summary: dict[str, Any], reasons: list[str]) -> str:
    """A monitor run for people (the Prefect artifact): window, drift, quality, alerts."""
    m = summary["primary_metric"]
    lines = [
        f"## Monitor: {summary['model']} version {summary['version']}, report "
        f"{summary['report_id']}",
        "",
        f"Window {summary['window']['start']} .. {summary['window']['end']}: "
        f"{summary['rows']} rows against {summary['reference_rows']} reference rows.",
        "",
        "| what | value |",
        "|---|---|",
        f"| drift share | {summary['drift_share']:.2f} |",
        f"| drifted columns | {', '.join(summary['drifted']) or 'none'} |",
        f"| prediction drift | {summary['prediction_drift']['drifted']} |",
        f"| {m['name']} on the reference | {_num(m['baseline'])} |",
        f"| {m['name']} estimated | {_num(m['estimated'])}"
        + (f" ({m['no_estimate']})" if m.get("no_estimate") else "")
        + " |",
        f"| {m['name']} realized | {_num(m['realized'])} |",
        "",
        "Alerts: " + ("; ".join(reasons) if reasons else "none"),
        "",
        f"`mlops drift show {summary['report_id']}`; dashboards: `mlops ui`",
    ]
    return "\n".join(lines)


def _num(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "-"
