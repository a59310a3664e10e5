"""Evaluate: score a model on the held-out test split, beside a scikit-learn baseline.

Classification reports F1, precision, recall, ROC-AUC and PR-AUC for the positive class (the
data set spec's, by default the minority class of a binary target; macro averages for more
classes) and the confusion matrix; regression reports RMSE, MAE and R^2. The baseline sees
exactly the model's preprocessed inputs, so the gap between them is what the network adds; the
trivial baseline (class priors, or the train mean) is the floor any model must clear.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from mlops.errors import MlopsError
from mlops.io import atomic_write_json, atomic_write_text
from mlops.params import EvaluateParams
from pipelines.artifact import Predictor, load_predictor
from pipelines.prepare import PreparedData, load_prepared
from pipelines.sources import label_key as _key

LOWER_IS_BETTER = frozenset({"rmse", "mae"})
MAX_CURVE_POINTS = 400


def primary_metric(task: str, params: EvaluateParams) -> tuple[str, bool]:
    """The metric the gate compares on, and whether higher is better."""
    if task == "classification":
        return params.primary_metric_classification, True
    name = params.primary_metric_regression
    return name, name not in LOWER_IS_BETTER


def _label_index(y_true: np.ndarray, classes: list[Any]) -> np.ndarray:
    index = {_key(c): i for i, c in enumerate(classes)}
    unknown = sorted({_key(v) for v in y_true} - index.keys())
    if unknown:
        raise MlopsError(f"test labels {unknown} are not among the model's classes {classes}")
    return np.asarray([index[_key(v)] for v in y_true], dtype=np.int64)


def positive_class(y: np.ndarray, n_classes: int, classes: list[Any], given: Any = None) -> int:
    """The index of the positive class: the spec's `given` label when there is one, else the
    minority class of `y` (the later class on a tie): failures, frauds."""
    if given is not None:
        keys = [_key(c) for c in classes]
        if _key(given) not in keys:
            raise MlopsError(f"positive class {given!r} is not among the classes {classes}")
        return keys.index(_key(given))
    counts = np.bincount(y, minlength=n_classes)
    return int(n_classes - 1 - np.argmin(counts[::-1]))


def _finite(value: float) -> float | None:
    # JSON has no NaN: an undefined metric (one class in the test split) is null.
    return float(value) if math.isfinite(value) else None


def evaluate_scores(
    task: str,
    y_true: np.ndarray,
    scores: np.ndarray,
    classes: list[Any],
    positive: Any = None,
) -> dict[str, Any]:
    """Metrics of `scores` (class probabilities, or predictions in target units) on `y_true`;
    binary metrics are for the label `positive` (None: the minority class of `y_true`)."""
    y_true = np.asarray(y_true)
    if task == "regression":
        y = y_true.astype(np.float64)
        pred = np.asarray(scores, dtype=np.float64).reshape(-1)
        return {
            "rmse": float(np.sqrt(skm.mean_squared_error(y, pred))),
            "mae": float(skm.mean_absolute_error(y, pred)),
            "r2": _finite(skm.r2_score(y, pred)) if len(y) > 1 else None,
            "n": len(y),
        }
    y = _label_index(y_true, classes)
    k = len(classes)
    pred = scores.argmax(axis=1)
    out: dict[str, Any] = {"accuracy": float(skm.accuracy_score(y, pred))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined precision etc. are reported as 0 / null
        if k == 2:
            pos = positive_class(y, k, classes, positive)
            hit, said = (y == pos).astype(int), (pred == pos).astype(int)
            both = 0 < hit.sum() < len(hit)
            out.update(
                positive_class=classes[pos],
                f1=float(skm.f1_score(hit, said, zero_division=0)),
                precision=float(skm.precision_score(hit, said, zero_division=0)),
                recall=float(skm.recall_score(hit, said, zero_division=0)),
                roc_auc=_finite(skm.roc_auc_score(hit, scores[:, pos])) if both else None,
                pr_auc=_finite(skm.average_precision_score(hit, scores[:, pos]))
                if hit.any()
                else None,
            )
        else:
            macro: dict[str, Any] = {"average": "macro", "labels": range(k), "zero_division": 0}
            onehot = np.eye(k)[y]
            seen = onehot.any(axis=0)  # AUCs are defined only for classes the split contains
            out.update(
                f1=float(skm.f1_score(y, pred, **macro)),
                precision=float(skm.precision_score(y, pred, **macro)),
                recall=float(skm.recall_score(y, pred, **macro)),
                roc_auc=_finite(
                    skm.roc_auc_score(onehot[:, seen], scores[:, seen], average="macro")
                )
                if seen.sum() > 1
                else None,
                pr_auc=_finite(skm.average_precision_score(onehot[:, seen], scores[:, seen]))
                if seen.any()
                else None,
            )
    out["confusion_matrix"] = skm.confusion_matrix(y, pred, labels=range(k)).tolist()
    out["classes"] = list(classes)
    out["n"] = len(y)
    return out


def evaluate_predictor(predictor: Predictor, test: pd.DataFrame) -> dict[str, Any]:
    """Metrics of a saved model (any runtime) on a raw test frame."""
    target = predictor.spec.target
    if target not in test.columns:
        raise MlopsError(f"test data has no target column '{target}'")
    return evaluate_scores(
        predictor.config.task,
        test[target].to_numpy(),
        predictor.scores(test),
        predictor.preprocessor.classes,
        predictor.spec.positive_class,
    )


def baseline_scores(data: PreparedData) -> np.ndarray:
    """A linear model on the network's own preprocessed features, scored on the test split."""
    from sklearn.linear_model import LinearRegression, LogisticRegression

    pre = data.preprocessor
    x_train, x_test = pre.transform(data.train), pre.transform(data.test)
    y_train = pre.encode_target(data.train[pre.target])
    if pre.task == "regression":
        reg = LinearRegression().fit(x_train, y_train)
        return np.asarray(reg.predict(x_test)) * pre.target_std + pre.target_mean
    clf = LogisticRegression(class_weight="balanced", max_iter=2000).fit(x_train, y_train)
    # predict_proba's columns follow clf.classes_: place them at the preprocessor's class ids.
    proba = np.zeros((len(x_test), len(pre.classes)))
    proba[:, clf.classes_] = clf.predict_proba(x_test)
    return proba


def trivial_scores(data: PreparedData) -> np.ndarray:
    """What a model that ignores its inputs predicts: the train split's class shares (so the
    majority class), or its mean target."""
    pre = data.preprocessor
    y_train = pre.encode_target(data.train[pre.target])
    if pre.task == "regression":
        return np.full(len(data.test), float(data.train[pre.target].astype(float).mean()))
    prior = np.bincount(y_train, minlength=len(pre.classes)) / len(y_train)
    return np.tile(prior, (len(data.test), 1))


def plot_frames(
    task: str, y_true: np.ndarray, scores: np.ndarray, classes: list[Any], positive: Any = None
) -> dict[str, pd.DataFrame]:
    """The evaluation plots, one frame per file; the other task's files get a header only, so
    every plot dvc.yaml declares exists and `dvc plots show` never warns about a missing one."""
    frames = {
        "pr_curve": pd.DataFrame(columns=["recall", "precision"]),
        "confusion": pd.DataFrame(columns=["actual", "predicted"]),
        "pred_vs_actual": pd.DataFrame(columns=["actual", "predicted"]),
    }
    if task == "regression":
        pairs = pd.DataFrame({"actual": y_true.astype(float), "predicted": scores.reshape(-1)})
        step = max(1, len(pairs) // MAX_CURVE_POINTS)
        frames["pred_vs_actual"] = pairs.iloc[::step].round(6).reset_index(drop=True)
        return frames
    y = _label_index(y_true, classes)
    if len(classes) == 2:
        pos = positive_class(y, 2, classes, positive)
        precision, recall, _ = skm.precision_recall_curve(y == pos, scores[:, pos])
    else:  # micro-average over classes: one curve that still reads as precision vs recall
        onehot = np.eye(len(classes))[y]
        precision, recall, _ = skm.precision_recall_curve(onehot.ravel(), scores.ravel())
    curve = pd.DataFrame({"recall": recall, "precision": precision})
    step = max(1, len(curve) // MAX_CURVE_POINTS)
    frames["pr_curve"] = curve.iloc[::step].round(6).reset_index(drop=True)
    labels = np.asarray([str(c) for c in classes], dtype=object)
    frames["confusion"] = pd.DataFrame(
        {"actual": labels[y], "predicted": labels[scores.argmax(axis=1)]}
    )
    return frames


def run_evaluate_stage(
    prepared_dir: Path, model_dir: Path, metrics_path: Path, plots_dir: Path, params: EvaluateParams
) -> dict[str, Any]:
    """The DVC stage: model and baseline metrics on the test split, and the evaluation plots."""
    data = load_prepared(prepared_dir)
    predictor = load_predictor(model_dir)
    task, target = data.spec.task, data.spec.target
    y_test = data.test[target].to_numpy()
    scores = predictor.scores(data.test)
    name, higher = primary_metric(task, params)
    classes, positive = data.preprocessor.classes, data.spec.positive_class
    report = {
        "task": task,
        "primary_metric": name,
        "higher_is_better": higher,
        "positive_class": positive,
        "model": evaluate_scores(task, y_test, scores, classes, positive),
        "baseline": evaluate_scores(task, y_test, baseline_scores(data), classes, positive),
        "trivial": evaluate_scores(task, y_test, trivial_scores(data), classes, positive),
        "rows": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
    }
    atomic_write_json(metrics_path, report)
    for stem, frame in plot_frames(task, y_test, scores, classes, positive).items():
        atomic_write_text(plots_dir / f"{stem}.csv", frame.to_csv(index=False))
    return report


def load_report(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise MlopsError(f"no evaluation report at {path}") from None
