"""Performance without labels: CBPE for classifiers, DLE for regressors.

Labels arrive late or never; a model's performance on today's traffic must be estimated from its
outputs. Confidence-based performance estimation (CBPE) calibrates the classifier's scores on a
labelled reference the model never trained on, so that a calibrated score reads as the
probability that the row belongs to the class; the expected confusion matrix of a window is then
a sum of those probabilities, and F1, precision, recall, accuracy, ROC-AUC and average precision
follow from it. Direct loss estimation (DLE) fits a small regressor that predicts each row's
absolute and squared error from the inputs and the prediction. Both hold under covariate shift
as long as the model's calibration survives it (the inputs move; the chance of the label given
the score does not). Neither can see a change in how the target depends on the inputs, nor
trust what the model does on inputs past the reference's range: on ai4i, our network's scores
under a 3 K ambient shift no longer mean what they meant on the reference, and the estimated
average precision is off by ~0.05. That is why `mark_unreliable` joins the multivariate check
(monitoring/multivariate.py) to an estimate: the shifts that break the estimate are the ones
it flags.

Each estimate carries a band of +/- 3 sampling errors: the spread of the realized metric over
bootstrap samples of the reference, scaled to the window's size by 1/sqrt(n) (NannyML's
"sampling error"). It covers the noise of a window's labels, not a broken assumption.

Why not NannyML itself: it implements exactly these methods, but 0.13.1 brings ~30 packages
(lightgbm, FLAML, a 224 MB xgboost wheel, kaleido, gcsfs, s3fs; ~650 MB) and reports usage over
the network unless told not to, for what is an isotonic calibrator, a gradient-boosted
regressor and a few hundred lines of numpy, all on the scikit-learn this project already has.
Written here, the fitted state is plain numbers (isotonic thresholds, tree arrays) saved as
JSON, so loading a monitor never unpickles a file.

    cbpe = CBPE.fit(reference_scores, reference_labels, positive=1, segments=reference_types)
    est = mark_unreliable(cbpe.estimate(window_scores, window_types), check.check(window))
    est.to_dict(); CBPE.from_dict(cbpe.to_dict())
    dle = DLE.fit(reference_inputs, reference_predictions, reference_targets)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from mlops.errors import MlopsError
from monitoring.multivariate import MultivariateResult

SIGMAS = 3.0
BOOTSTRAP = 200
BOOTSTRAP_ROWS = 10_000  # the spread scales as 1/sqrt(rows): larger draws only cost time
MIN_SEGMENT_CLASS_ROWS = 50
CLASSIFICATION_METRICS = ("accuracy", "f1", "precision", "recall", "roc_auc", "pr_auc")
REGRESSION_METRICS = ("mae", "rmse")


@dataclass(frozen=True)
class MetricEstimate:
    value: float
    lower: float
    upper: float
    sampling_error: float  # one standard error of the realized metric at the window's size

    def covers(self, actual: float) -> bool:
        return self.lower <= actual <= self.upper


@dataclass(frozen=True)
class Estimate:
    """Estimated metrics of one window; `reliable` is False, with `reasons`, where the
    estimate's assumptions are known not to hold."""

    rows: int
    metrics: Mapping[str, MetricEstimate]
    reliable: bool = True
    reasons: tuple[str, ...] = ()

    def __getitem__(self, name: str) -> MetricEstimate:
        return self.metrics[name]

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "reliable": self.reliable,
            "reasons": list(self.reasons),
            "metrics": {
                k: {
                    "value": m.value,
                    "lower": m.lower,
                    "upper": m.upper,
                    "sampling_error": m.sampling_error,
                }
                for k, m in self.metrics.items()
            },
        }


def mark_unreliable(estimate: Estimate, check: MultivariateResult) -> Estimate:
    """The estimate, marked unreliable with the check's reasons when the check flags the window."""
    if not check.flagged:
        return estimate
    return replace(estimate, reliable=False, reasons=(*estimate.reasons, *check.reasons()))


def backtest(
    estimates: Sequence[Estimate], actual: Sequence[Mapping[str, float]]
) -> dict[str, dict[str, float]]:
    """How estimates fared once the labels came: per metric, the mean absolute error, the mean
    error (bias) and the share of windows whose band covered the realized value; and the share of
    windows marked reliable (under "windows")."""
    if len(estimates) != len(actual) or not estimates:
        raise MlopsError("backtest: expected one realized metrics dict per estimate")
    out: dict[str, dict[str, float]] = {}
    for name in estimates[0].metrics:
        pairs = [(e[name], a[name]) for e, a in zip(estimates, actual, strict=True)]
        pairs = [(m, x) for m, x in pairs if not math.isnan(x)]
        if not pairs:
            continue
        errors = np.array([m.value - x for m, x in pairs])
        out[name] = {
            "mae": float(np.abs(errors).mean()),
            "bias": float(errors.mean()),
            "coverage": float(np.mean([m.covers(x) for m, x in pairs])),
        }
    out["windows"] = {
        "count": float(len(estimates)),
        "reliable": float(np.mean([e.reliable for e in estimates])),
    }
    return out


# ---------------------------------------------------------------------------------------------
# Metrics from weights: 0/1 labels give the realized metric, calibrated probabilities its
# expected value, through the same arithmetic.


def _ranking_metrics(score: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """ROC-AUC and average precision of ranking by `score`, rows weighted positive by `w`.

    Tied scores form one threshold, as in scikit-learn. For 0/1 weights this is the realized
    metric; for probabilities, average precision is its expectation over labels drawn from them
    (the tie-group variance term is what makes it the expectation rather than a plug-in), up to
    the ratio of expectations."""
    order = np.argsort(-score, kind="mergesort")
    s, w = score[order], w[order]
    ends = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    cum_w = np.cumsum(w)[ends]
    total = cum_w[-1]
    if total <= 0:
        return math.nan, math.nan
    seen = ends + 1.0
    cum_n = seen - cum_w
    d_w = np.diff(cum_w, prepend=0.0)
    var = np.diff(np.cumsum(w * (1.0 - w))[ends], prepend=0.0)
    ap = float(((d_w * cum_w + var) / seen).sum() / total)
    negatives = cum_n[-1]
    if negatives <= 0:
        return math.nan, ap
    tpr, fpr = np.r_[0.0, cum_w / total], np.r_[0.0, cum_n / negatives]
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
    return auc, ap


def _class_metrics(score: np.ndarray, said: np.ndarray, w: np.ndarray) -> dict[str, float]:
    """One class against the rest: `said` marks rows predicted as the class."""
    tp, fp = float(w[said].sum()), float((1.0 - w[said]).sum())
    fn = float(w[~said].sum())
    auc, ap = _ranking_metrics(score, w)
    return {
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn > 0 else 0.0,
        "precision": tp / (tp + fp) if tp + fp > 0 else 0.0,
        "recall": tp / (tp + fn) if tp + fn > 0 else 0.0,
        "roc_auc": auc,
        "pr_auc": ap,
    }


def _metrics(scores: np.ndarray, probs: np.ndarray, positive: int | None) -> dict[str, float]:
    """Metrics of predicting argmax(scores) where row i is class k with probability probs[i, k]
    (one-hot rows: the realized metrics)."""
    pred = scores.argmax(axis=1)
    out = {"accuracy": float(probs[np.arange(len(pred)), pred].mean())}
    if positive is not None:
        out.update(_class_metrics(scores[:, positive], pred == positive, probs[:, positive]))
        return out
    per = [_class_metrics(scores[:, k], pred == k, probs[:, k]) for k in range(scores.shape[1])]
    for name in ("f1", "precision", "recall"):
        out[name] = float(np.mean([m[name] for m in per]))
    # The AUCs average over the classes that occur, as pipelines/evaluate.py does.
    for name in ("roc_auc", "pr_auc"):
        values = [m[name] for m in per if not math.isnan(m[name])]
        out[name] = float(np.mean(values)) if values else math.nan
    return out


def _check_scores(scores: np.ndarray, where: str, n_classes: int | None = None) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] < 2 or len(s) == 0:
        raise MlopsError(f"{where}: expected class probabilities (rows, classes), got {s.shape}")
    if n_classes is not None and s.shape[1] != n_classes:
        raise MlopsError(f"{where}: expected {n_classes} classes, got {s.shape[1]}")
    if not np.isfinite(s).all():
        raise MlopsError(f"{where}: scores contain NaN or infinite values")
    return s


def _check_labels(labels: np.ndarray, rows: int, n_classes: int, where: str) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (rows,) or not np.issubdtype(y.dtype, np.integer):
        raise MlopsError(f"{where}: expected {rows} integer class indices, got {y.dtype} {y.shape}")
    if y.min() < 0 or y.max() >= n_classes:
        raise MlopsError(f"{where}: class indices must be in 0..{n_classes - 1}")
    return y.astype(np.int64)


def _positive(positive: int | None, n_classes: int, y: np.ndarray | None = None) -> int | None:
    """Binary: the given class index, else the minority class (the later one on a tie), as
    pipelines/evaluate.py chooses; more classes: None (macro averages)."""
    if n_classes > 2:
        if positive is not None:
            raise MlopsError(f"a positive class applies to binary targets, not {n_classes} classes")
        return None
    if positive is None:
        if y is None:
            raise MlopsError("binary scores: say which class is positive")
        counts = np.bincount(y, minlength=2)
        return int(1 - np.argmin(counts[::-1]))
    if isinstance(positive, bool) or not isinstance(positive, int | np.integer):
        raise MlopsError(f"positive class: expected a class index, got {positive!r}")
    if not 0 <= positive < n_classes:
        raise MlopsError(f"positive class {positive} is not a class index (0..{n_classes - 1})")
    return int(positive)


def realized(
    scores: np.ndarray, labels: np.ndarray, positive: int | None = None
) -> dict[str, float]:
    """The metrics CBPE estimates, from true labels (class indices): binary metrics for the
    class `positive` (None: the minority class of `labels`), macro averages for more classes.
    Undefined AUCs (one class only) are NaN."""
    s = _check_scores(scores, "realized metrics")
    y = _check_labels(labels, len(s), s.shape[1], "realized metrics")
    return _metrics(s, np.eye(s.shape[1])[y], _positive(positive, s.shape[1], y))


def realized_errors(predictions: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """MAE and RMSE, the metrics DLE estimates."""
    p = np.asarray(predictions, dtype=np.float64).reshape(-1)
    t = np.asarray(targets, dtype=np.float64).reshape(-1)
    if len(p) != len(t) or len(p) == 0:
        raise MlopsError(f"realized errors: {len(p)} predictions for {len(t)} targets")
    e = p - t
    return {"mae": float(np.abs(e).mean()), "rmse": float(np.sqrt((e**2).mean()))}


def _sampling_errors(
    rows: int, metric: Callable[[np.ndarray], dict[str, float]], names: tuple[str, ...], seed: int
) -> dict[str, float]:
    """One standard error of each realized metric at the reference's size, from the spread
    over bootstrap samples of the reference (of at most BOOTSTRAP_ROWS rows)."""
    rng = np.random.default_rng(seed)
    size = min(rows, BOOTSTRAP_ROWS)
    draws = [metric(rng.integers(0, rows, size)) for _ in range(BOOTSTRAP)]
    # Scaled to the reference's size: bands divide by the window's size.
    return {
        k: float(np.nanstd([d[k] for d in draws], ddof=1)) * math.sqrt(size / rows) for k in names
    }


def _band(
    values: Mapping[str, float], sampling: Mapping[str, float], reference_rows: int, rows: int
) -> dict[str, MetricEstimate]:
    out = {}
    for name, value in values.items():
        se = sampling[name] * math.sqrt(reference_rows / rows)
        lower, upper = value - SIGMAS * se, value + SIGMAS * se
        if name in CLASSIFICATION_METRICS:  # scores bounded by [0, 1]
            lower, upper = max(lower, 0.0), min(upper, 1.0)
        else:
            lower = max(lower, 0.0)
        out[name] = MetricEstimate(value=value, lower=lower, upper=upper, sampling_error=se)
    return out


# ---------------------------------------------------------------------------------------------
# CBPE


@dataclass(frozen=True)
class _Isotonic:
    """A fitted isotonic calibrator as its thresholds: prediction is linear interpolation,
    clipped at the ends, exactly as IsotonicRegression(out_of_bounds="clip") predicts."""

    x: np.ndarray
    y: np.ndarray

    @classmethod
    def fit(cls, score: np.ndarray, hit: np.ndarray) -> _Isotonic:
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(score, hit)
        return cls(np.asarray(iso.X_thresholds_, float), np.asarray(iso.y_thresholds_, float))

    def __call__(self, score: np.ndarray) -> np.ndarray:
        return np.interp(score, self.x, self.y)


class CBPE:
    """Confidence-based performance estimation for a classifier's class probabilities.

    With `segments` (one label a row, e.g. a product type), each segment with enough of every
    class in the reference gets its own calibration, and the rest share the global one. A model
    can be calibrated overall and miscalibrated within segments; a change in the segment mix then
    biases a global calibration (on ai4i, a product-mix change moved the estimated average
    precision by +0.02 to +0.04 with one calibration, and by under 0.02 with one per type)."""

    def __init__(
        self,
        *,
        n_classes: int,
        positive: int | None,
        calibrators: list[_Isotonic],
        sampling: Mapping[str, float],
        reference_rows: int,
        segments: Mapping[str, list[_Isotonic]] | None = None,
    ) -> None:
        self.n_classes, self.positive = n_classes, positive
        self.calibrators, self.sampling = calibrators, dict(sampling)
        self.reference_rows = reference_rows
        self.segments = dict(segments) if segments is not None else None
        wanted = 1 if positive is not None else n_classes
        for cals in [calibrators, *(self.segments or {}).values()]:
            if len(cals) != wanted:
                raise MlopsError(f"CBPE: {len(cals)} calibrator(s) for {n_classes} classes")

    @classmethod
    def fit(
        cls,
        reference_scores: np.ndarray,
        reference_labels: np.ndarray,
        positive: int | None = None,
        *,
        segments: np.ndarray | None = None,
        min_segment_class_rows: int = MIN_SEGMENT_CLASS_ROWS,
        seed: int = 0,
    ) -> CBPE:
        """Calibrates on a labelled reference the model never trained on (class indices as
        labels); binary metrics are for class `positive` (None: the minority class). A segment
        gets its own calibration when each class it calibrates has at least
        `min_segment_class_rows` reference rows in and out of it."""
        s = _check_scores(reference_scores, "CBPE reference")
        k = s.shape[1]
        y = _check_labels(reference_labels, len(s), k, "CBPE reference")
        pos = _positive(positive, k, y)
        onehot = np.eye(k)[y]
        classes = [pos] if pos is not None else list(range(k))

        def calibrate(rows: np.ndarray | slice) -> list[_Isotonic]:
            return [_Isotonic.fit(s[rows, c], onehot[rows, c]) for c in classes]

        per_segment: dict[str, list[_Isotonic]] | None = None
        if segments is not None:
            keys = _segment_keys(segments, len(s), "CBPE reference")
            per_segment = {}
            for key in sorted(set(keys)):
                rows = np.flatnonzero(keys == key)
                hits = onehot[rows][:, classes].sum(axis=0)
                if min(hits.min(), (len(rows) - hits).min()) >= min_segment_class_rows:
                    per_segment[key] = calibrate(rows)

        def metric(idx: np.ndarray) -> dict[str, float]:
            return _metrics(s[idx], onehot[idx], pos)

        return cls(
            n_classes=k,
            positive=pos,
            calibrators=calibrate(slice(None)),
            sampling=_sampling_errors(len(s), metric, CLASSIFICATION_METRICS, seed),
            reference_rows=len(s),
            segments=per_segment,
        )

    def calibrated(self, scores: np.ndarray, segments: np.ndarray | None = None) -> np.ndarray:
        """Calibrated class probabilities (rows, classes)."""
        s = _check_scores(scores, "CBPE", self.n_classes)
        classes = [self.positive] if self.positive is not None else range(self.n_classes)
        c = np.column_stack(
            [cal(s[:, k]) for k, cal in zip(classes, self.calibrators, strict=True)]
        )
        if self.segments is not None:
            if segments is None:
                raise MlopsError("CBPE was fitted per segment: pass the window's segments")
            keys = _segment_keys(segments, len(s), "CBPE")
            for key, cals in self.segments.items():
                rows = np.flatnonzero(keys == key)
                if len(rows):
                    c[rows] = np.column_stack(
                        [cal(s[rows, k]) for k, cal in zip(classes, cals, strict=True)]
                    )
        if self.positive is not None:
            out = np.empty_like(s)
            out[:, self.positive], out[:, 1 - self.positive] = c[:, 0], 1.0 - c[:, 0]
            return out
        # One-vs-rest calibrators need not sum to one: renormalise, keeping raw scores where
        # every calibrator says zero.
        total = c.sum(axis=1, keepdims=True)
        return np.where(total > 0, c / np.where(total > 0, total, 1.0), s)

    def estimate(self, window_scores: np.ndarray, segments: np.ndarray | None = None) -> Estimate:
        """Estimated metrics of a window from its class probabilities (and, for a CBPE fitted
        per segment, each row's segment)."""
        s = _check_scores(window_scores, "CBPE", self.n_classes)
        values = _metrics(s, self.calibrated(s, segments), self.positive)
        return Estimate(len(s), _band(values, self.sampling, self.reference_rows, len(s)))

    def to_dict(self) -> dict[str, Any]:
        def cals(cs: list[_Isotonic]) -> list[dict[str, list[float]]]:
            return [{"x": c.x.tolist(), "y": c.y.tolist()} for c in cs]

        return {
            "kind": "cbpe",
            "n_classes": self.n_classes,
            "positive": self.positive,
            "calibrators": cals(self.calibrators),
            "segments": None
            if self.segments is None
            else {k: cals(v) for k, v in self.segments.items()},
            "sampling": self.sampling,
            "reference_rows": self.reference_rows,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CBPE:
        if d.get("kind") != "cbpe":
            raise MlopsError(f"CBPE: not a saved estimator (kind {d.get('kind')!r})")

        def cals(cs: Any) -> list[_Isotonic]:
            return [_Isotonic(np.asarray(c["x"], float), np.asarray(c["y"], float)) for c in cs]

        try:
            segments = d.get("segments")
            return cls(
                n_classes=int(d["n_classes"]),
                positive=None if d["positive"] is None else int(d["positive"]),
                calibrators=cals(d["calibrators"]),
                sampling={k: float(d["sampling"][k]) for k in CLASSIFICATION_METRICS},
                reference_rows=int(d["reference_rows"]),
                segments=None
                if segments is None
                else {str(k): cals(v) for k, v in segments.items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise MlopsError(f"CBPE: malformed saved state ({e})") from None


def _segment_keys(segments: np.ndarray, rows: int, where: str) -> np.ndarray:
    """Segment labels as text, so that saved and live labels (1, "1", np.int64(1)) match."""
    values = np.asarray(segments, dtype=object).reshape(-1)
    if len(values) != rows:
        raise MlopsError(f"{where}: {len(values)} segment labels for {rows} rows")
    return np.asarray([str(v) for v in values], dtype=object)


# ---------------------------------------------------------------------------------------------
# DLE


@dataclass(frozen=True)
class _Trees:
    """Gradient-boosted regression trees as arrays (scikit-learn's public `tree_` attributes):
    prediction walks them in numpy, so a saved estimator needs no pickle."""

    baseline: float
    rate: float
    left: list[np.ndarray]
    right: list[np.ndarray]
    feature: list[np.ndarray]
    threshold: list[np.ndarray]
    value: list[np.ndarray]

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, seed: int) -> _Trees:
        from sklearn.ensemble import GradientBoostingRegressor

        gb = GradientBoostingRegressor(
            n_estimators=100, max_depth=3, learning_rate=0.1, random_state=seed
        ).fit(x, y)
        trees = [e.tree_ for e in gb.estimators_[:, 0]]
        return cls(
            baseline=float(gb.init_.predict(x[:1])[0]),
            rate=float(gb.learning_rate),
            left=[np.asarray(t.children_left, np.int64) for t in trees],
            right=[np.asarray(t.children_right, np.int64) for t in trees],
            feature=[np.asarray(t.feature, np.int64) for t in trees],
            threshold=[np.asarray(t.threshold, np.float64) for t in trees],
            value=[np.asarray(t.value, np.float64).reshape(-1) for t in trees],
        )

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32).astype(np.float64)  # scikit-learn's trees split on float32
        rows = np.arange(len(x))
        out = np.full(len(x), self.baseline)
        for left, right, feature, threshold, value in zip(
            self.left, self.right, self.feature, self.threshold, self.value, strict=True
        ):
            node = np.zeros(len(x), dtype=np.int64)
            while True:
                inner = left[node] >= 0
                if not inner.any():
                    break
                n = node[inner]
                go_left = x[rows[inner], feature[n]] <= threshold[n]
                node[inner] = np.where(go_left, left[n], right[n])
            out += self.rate * value[node]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "rate": self.rate,
            "trees": [
                {"left": a.tolist(), "right": b.tolist(), "feature": c.tolist()}
                | {"threshold": d.tolist(), "value": e.tolist()}
                for a, b, c, d, e in zip(
                    self.left, self.right, self.feature, self.threshold, self.value, strict=True
                )
            ],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> _Trees:
        trees = d["trees"]
        return cls(
            baseline=float(d["baseline"]),
            rate=float(d["rate"]),
            left=[np.asarray(t["left"], np.int64) for t in trees],
            right=[np.asarray(t["right"], np.int64) for t in trees],
            feature=[np.asarray(t["feature"], np.int64) for t in trees],
            threshold=[np.asarray(t["threshold"], np.float64) for t in trees],
            value=[np.asarray(t["value"], np.float64) for t in trees],
        )


def _dle_inputs(inputs: np.ndarray, predictions: np.ndarray, where: str) -> np.ndarray:
    x = np.asarray(inputs, dtype=np.float64)
    p = np.asarray(predictions, dtype=np.float64).reshape(-1)
    if x.ndim == 1:
        x = x.reshape(-1, 1)
    if x.ndim != 2 or len(x) != len(p) or len(p) == 0:
        raise MlopsError(f"{where}: expected inputs (rows, features) and one prediction a row")
    out = np.column_stack([x, p])
    if not np.isfinite(out).all():
        raise MlopsError(f"{where}: inputs or predictions contain NaN or infinite values")
    return out


class DLE:
    """Direct loss estimation for a regressor: boosted trees predict each row's absolute and
    squared error from its (preprocessed) inputs and the prediction."""

    def __init__(
        self,
        *,
        features: int,
        absolute: _Trees,
        squared: _Trees,
        sampling: Mapping[str, float],
        reference_rows: int,
    ) -> None:
        self.features, self.absolute, self.squared = features, absolute, squared
        self.sampling, self.reference_rows = dict(sampling), reference_rows

    @classmethod
    def fit(
        cls,
        reference_inputs: np.ndarray,
        reference_predictions: np.ndarray,
        reference_targets: np.ndarray,
        *,
        seed: int = 0,
    ) -> DLE:
        """Fits on a labelled reference the model never trained on."""
        x = _dle_inputs(reference_inputs, reference_predictions, "DLE reference")
        t = np.asarray(reference_targets, dtype=np.float64).reshape(-1)
        if len(t) != len(x) or not np.isfinite(t).all():
            raise MlopsError("DLE reference: expected one finite target a row")
        e = x[:, -1] - t

        def metric(idx: np.ndarray) -> dict[str, float]:
            return realized_errors(e[idx], np.zeros(len(idx)))

        return cls(
            features=x.shape[1] - 1,
            absolute=_Trees.fit(x, np.abs(e), seed),
            squared=_Trees.fit(x, e**2, seed),
            sampling=_sampling_errors(len(x), metric, REGRESSION_METRICS, seed),
            reference_rows=len(x),
        )

    def estimate(self, window_inputs: np.ndarray, window_predictions: np.ndarray) -> Estimate:
        x = _dle_inputs(window_inputs, window_predictions, "DLE")
        if x.shape[1] - 1 != self.features:
            raise MlopsError(f"DLE: expected {self.features} input columns, got {x.shape[1] - 1}")
        values = {
            "mae": float(np.clip(self.absolute(x), 0.0, None).mean()),
            "rmse": float(math.sqrt(np.clip(self.squared(x), 0.0, None).mean())),
        }
        return Estimate(len(x), _band(values, self.sampling, self.reference_rows, len(x)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "dle",
            "features": self.features,
            "absolute": self.absolute.to_dict(),
            "squared": self.squared.to_dict(),
            "sampling": self.sampling,
            "reference_rows": self.reference_rows,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DLE:
        if d.get("kind") != "dle":
            raise MlopsError(f"DLE: not a saved estimator (kind {d.get('kind')!r})")
        try:
            return cls(
                features=int(d["features"]),
                absolute=_Trees.from_dict(d["absolute"]),
                squared=_Trees.from_dict(d["squared"]),
                sampling={k: float(d["sampling"][k]) for k in REGRESSION_METRICS},
                reference_rows=int(d["reference_rows"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise MlopsError(f"DLE: malformed saved state ({e})") from None
