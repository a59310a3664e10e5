"""The gate: a candidate reaches `staging` only when it is fit to replace what serves.

The reference is a compressed child's parent; else the production model, re-scored on the
CANDIDATE's test split (its stored metrics come from another split); with no production
model, the linear baseline trained in the same run.

The decision is statistical: both models are scored on the same test rows, the rows are
resampled with replacement (a paired bootstrap), and the 95% interval of the improvement is
kept with the decision. Against production (`significant`, superiority) the candidate is
staged when the interval's lower bound is above `evaluate.margin`: a new version must be shown
better. Against the baseline (`noninferior`: a first deployment has nothing to beat) it is
staged when the lower bound is above minus `evaluate.noninferiority_margin` (bounded metrics)
or minus `noninferiority_relative` of the baseline's error: a model as good as the simple one
is deployed, and a tie with a baseline that scores perfectly is a pass. A compressed child is
judged against its parent (`point`, within `compress.max_quality_drop`), whoever promoted the
parent. Each decision says why, and what to do next. Too few
test rows, or too few positives, is an explicit `inconclusive` decision: the candidate stays a
candidate for a person to decide, never a silent pass. Production is a person's decision:
`promote` (`mlops models promote`) makes it, through the store's transition rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn import metrics as skm

from mlops.errors import MlopsError
from mlops.params import EvaluateParams
from mlops.settings import Workspace
from mlops.store import ModelRecord, Store
from pipelines.artifact import model_folder
from pipelines.evaluate import (
    _label_index,
    baseline_scores,
    evaluate_scores,
    positive_class,
    primary_metric,
)
from pipelines.model import load_predictor
from pipelines.prepare import PreparedData, load_prepared

NUMBERS = ("pr_auc", "roc_auc", "f1", "precision", "recall", "accuracy", "rmse", "mae", "r2")
CONFIDENCE = 0.95


def model_dir(ws: Workspace, record: ModelRecord) -> Path:
    """The save_model directory of a registered version."""
    return model_folder(ws.version_dir(record.path))


def improvement(candidate: float, reference: float, higher: bool) -> float:
    """How much better the candidate is (positive: better), whichever way the metric points."""
    return candidate - reference if higher else reference - candidate


@dataclass(frozen=True)
class Scored:
    """Per-row outputs of two models on the same test rows, in the metric's terms."""

    task: str
    y: np.ndarray  # class ids (classification) or target values (regression)
    candidate: np.ndarray
    reference: np.ndarray
    positive: int | None  # class id whose metrics are reported (binary classification)


def metric_value(metric: str, s: Scored, scores: np.ndarray, rows: np.ndarray) -> float | None:
    """One metric on a subset of rows (indices, repeats allowed); None where undefined."""
    y = s.y[rows]
    if s.task == "regression":
        err = scores[rows] - y
        if metric == "rmse":
            return float(np.sqrt(np.mean(err**2)))
        if metric == "mae":
            return float(np.mean(np.abs(err)))
        total = float(np.sum((y - y.mean()) ** 2))
        return 1.0 - float(np.sum(err**2)) / total if total > 0 else None
    p = scores[rows]
    if s.positive is None:  # more than two classes: the macro averages evaluate_scores reports
        value = evaluate_scores("classification", y, p, list(range(p.shape[1])))[metric]
        return None if value is None else float(value)
    hit = y == s.positive
    if metric == "pr_auc":
        return float(skm.average_precision_score(hit, p[:, s.positive])) if hit.any() else None
    if metric == "roc_auc":
        both = 0 < hit.sum() < len(hit)
        return float(skm.roc_auc_score(hit, p[:, s.positive])) if both else None
    said = p.argmax(axis=1) == s.positive
    tp = float(np.sum(hit & said))
    denom = float(hit.sum() + said.sum())
    if metric == "f1":
        return 2 * tp / denom if denom else 0.0
    raise MlopsError(f"the gate cannot use metric {metric!r}")


def paired_bootstrap(
    metric: str, higher: bool, s: Scored, *, samples: int, seed: int
) -> tuple[float, float, int]:
    """The 95% percentile interval of the candidate's improvement over the reference (positive
    = better, whatever the metric's direction), both scored on the same resampled rows; and how
    many resamples had the metric defined. Every resample at once (pipelines/bootstrap.py)."""
    from pipelines import bootstrap

    def weighted(scores: np.ndarray, w: np.ndarray) -> np.ndarray:
        if s.task == "regression":
            return bootstrap.regression(metric, w, s.y, scores)
        return bootstrap.classification(metric, w, s.y, scores, s.positive)

    parts = []
    for w in bootstrap.resample_counts(len(s.y), samples, seed):
        a, b = weighted(s.candidate, w), weighted(s.reference, w)
        d = a - b if higher else b - a
        parts.append(d[np.isfinite(d)])
    diffs = np.concatenate(parts) if parts else np.empty(0)
    if not len(diffs):
        return float("nan"), float("nan"), 0
    alpha = (1 - CONFIDENCE) / 2
    low, high = np.quantile(diffs, [alpha, 1 - alpha])
    return float(low), float(high), len(diffs)


def _scored(ws: Workspace, cand: ModelRecord, ref_scores: np.ndarray, data: PreparedData) -> Scored:
    predictor = load_predictor(model_dir(ws, cand))
    spec, test = data.spec, data.test
    y_raw = test[spec.target].to_numpy()
    if spec.task == "regression":
        y = y_raw.astype(np.float64)
        return Scored("regression", y, predictor.scores(test), ref_scores, None)
    classes = predictor.preprocessor.classes
    y = _label_index(y_raw, classes)
    binary = len(classes) == 2
    pos = positive_class(y, 2, classes, spec.positive_class) if binary else None
    return Scored("classification", y, predictor.scores(test), ref_scores, pos)


def _reference(
    ws: Workspace, store: Store, candidate: ModelRecord, data: PreparedData
) -> tuple[str, ModelRecord | None, np.ndarray]:
    """What the candidate is judged against, and its scores on the candidate's test rows."""
    # A compressed child answers to its parent's tolerance, whoever promoted the parent.
    if candidate.parent_id is not None:
        parent = store.get_model(candidate.parent_id)
        return "parent", parent, load_predictor(model_dir(ws, parent)).scores(data.test)
    prod = store.production_model(candidate.name)
    if prod is not None and prod.id != candidate.id:
        return "production", prod, load_predictor(model_dir(ws, prod)).scores(data.test)
    return "baseline", None, baseline_scores(data)


BOUNDED = frozenset({"pr_auc", "roc_auc", "f1", "r2"})  # 1.0 is perfect; errors: 0.0


def _margin(against: str, rule: str, metric: str, reference: float | None,
            params: EvaluateParams, parent_tolerance: float) -> float:  # fmt: skip
    """The threshold the improvement (or its interval's lower bound) must clear."""
    if against == "parent":
        return -parent_tolerance
    if rule != "noninferior":
        return params.margin
    if metric in BOUNDED or reference is None:
        return -params.noninferiority_margin
    return -params.noninferiority_relative * abs(reference)


def _perfect(metric: str, value: float | None) -> bool:
    return value is not None and value == (1.0 if metric in BOUNDED else 0.0)


def next_step(outcome: str, against: str, ref: str) -> str:
    """What a user can do after a decision, in one sentence."""
    if outcome == "staged":
        return (
            f"`mlops models promote {ref} --to production`, or `mlops rollout {ref} "
            "--progressive` beside production"
            if against == "production"
            else f"`mlops models promote {ref} --to production`"
        )
    override = f"`mlops models promote {ref} --to production --override --reason TEXT`"
    if outcome == "inconclusive":
        return f"ingest more rows (or lower evaluate.min_test_rows), or decide yourself: {override}"
    if against == "production":
        return "production stays; retrain on more or newer data, or try `--set train.search=...`"
    if against == "parent":
        return (
            "its parent stays the version to serve; a larger compress.max_quality_drop allows more"
        )
    return (
        "try the linear family (`--set train.hidden=[]`) or `train.search`, add data, or "
        f"{override}"
    )


def gate(
    ws: Workspace,
    store: Store,
    candidate: ModelRecord,
    params: EvaluateParams,
    *,
    parent_tolerance: float = 0.0,
) -> ModelRecord:
    """Decide a candidate: staging, rejected or (too little evidence) inconclusive.

    `parent_tolerance` is how much worse than its parent a compressed child may be when the
    parent is the reference. Returns the updated record; the decision is kept with it.
    """
    metric, higher = primary_metric(candidate.metrics["task"], params)
    decision: dict[str, Any] = {"metric": metric, "higher_is_better": higher}
    if candidate.parent_id is not None:
        parent = store.get_model(candidate.parent_id)
        if parent.stage == "rejected":
            reason = f"its parent {parent.ref} was rejected"
            decision.update(outcome="rejected", passed=False, reason=reason)
            return _move(store, candidate, "rejected", decision)
    try:
        data = load_prepared(ws.version_dir(candidate.path) / "prepared")
        against, ref, ref_scores = _reference(ws, store, candidate, data)
        scored = _scored(ws, candidate, ref_scores, data)
    except MlopsError as exc:
        # A production model that cannot score this data (new columns, lost files) cannot be
        # beaten on it: the candidate waits for a person, it is not staged silently.
        reason = f"could not compare with the reference: {exc}"
        decision.update(outcome="inconclusive", passed=False, reason=reason)
        return store.record_decision(candidate.id, decision)
    name = against if ref is None else f"{against} {ref.ref}"
    decision.update(
        decide(scored, metric=metric, higher=higher, against=against, name=name,
               candidate_ref=candidate.ref, params=params, parent_tolerance=parent_tolerance)
    )  # fmt: skip
    decision["against_ref"] = ref.ref if ref else None
    decision["test_split"]["md5"] = candidate.lineage.get("test_split_md5")
    if ref is not None:  # the reference's every metric on these rows, shown beside the decision
        y_raw = data.test[data.spec.target].to_numpy()
        ref_metrics = evaluate_scores(
            scored.task, y_raw, ref_scores, data.preprocessor.classes, data.spec.positive_class
        )
        decision["reference_metrics"] = {k: ref_metrics.get(k) for k in NUMBERS}
    if decision["outcome"] == "inconclusive":
        return store.record_decision(candidate.id, decision)
    return _move(store, candidate, "staging" if decision["passed"] else "rejected", decision)


def decide(
    scored: Scored,
    *,
    metric: str,
    higher: bool,
    against: str,
    name: str,
    candidate_ref: str,
    params: EvaluateParams,
    parent_tolerance: float = 0.0,
) -> dict[str, Any]:
    """The decision on two models' scores of the same test rows: the rule for what they are
    compared with (`against`: production, baseline or parent), the values, the bootstrap
    interval, the outcome (staged, rejected, inconclusive), why in words, and what next."""
    rule: str = params.rule
    if rule == "auto":
        rule = {"production": "significant", "baseline": "noninferior"}.get(against, "point")
    all_rows = np.arange(len(scored.y))
    cand_value = metric_value(metric, scored, scored.candidate, all_rows)
    ref_value = metric_value(metric, scored, scored.reference, all_rows)
    margin = _margin(against, rule, metric, ref_value, params, parent_tolerance)
    positives = int(np.sum(scored.y == scored.positive)) if scored.positive is not None else None
    decision: dict[str, Any] = {
        "against": against, "rule": rule, "margin": margin, "candidate": cand_value,
        "reference": ref_value, "test_split": {"rows": len(scored.y), "positives": positives},
    }  # fmt: skip
    low, high, defined = paired_bootstrap(
        metric, higher, scored, samples=params.bootstrap_samples, seed=params.seed
    )
    decision["interval"] = None if defined == 0 else [low, high]
    decision["confidence"] = CONFIDENCE
    decision["bootstrap_samples"] = defined
    too_few = len(scored.y) < params.min_test_rows or (
        positives is not None and positives < params.min_positives
    )
    if cand_value is None or ref_value is None or too_few or defined == 0:
        why = (
            f"{metric} is undefined on this test split"
            if cand_value is None or ref_value is None or defined == 0
            else f"too little evidence: {len(scored.y)} test rows"
            + (f", {positives} positives" if positives is not None else "")
            + f" (needs {params.min_test_rows} rows"
            + (f" and {params.min_positives} positives" if positives is not None else "")
            + ")"
        )
        decision.update(outcome="inconclusive", passed=False, reason=why,
                        next=next_step("inconclusive", against, candidate_ref))  # fmt: skip
        return decision
    better = improvement(cand_value, ref_value, higher)
    decision["delta"] = cand_value - ref_value
    decision["improvement"] = better
    interval_rule = rule in ("significant", "noninferior")
    passed = bool((low if interval_rule else better) > margin)
    what = (
        f"95% interval of the improvement [{low:+.4f}, {high:+.4f}]"
        if interval_rule
        else f"improvement {better:+.4f} (95% interval [{low:+.4f}, {high:+.4f}])"
    )
    verb = "above" if passed else "not above"
    meaning = {
        "significant": "better than it" if passed else "not shown better than it",
        "noninferior": "no worse than it" if passed else "worse than it",
        "point": "within tolerance" if passed else "beyond tolerance",
    }[rule]
    reason = (
        f"{metric} {cand_value:.4f} vs {name} {ref_value:.4f}: {what} is {verb} the margin "
        f"{margin:+.4g} ({rule} rule: {meaning})"
    )
    decision["saturated"] = _perfect(metric, ref_value)
    if decision["saturated"]:  # nothing can beat a perfect score: only a tie can be shown
        reason = f"the {against} scores a perfect {metric} on this split; " + reason
    outcome = "staged" if passed else "rejected"
    decision.update(outcome=outcome, passed=passed, reason=reason,
                    next=next_step(outcome, against, candidate_ref))  # fmt: skip
    return decision


def _move(
    store: Store, candidate: ModelRecord, stage: str, decision: dict[str, Any]
) -> ModelRecord:
    return store.set_stage(
        candidate.id, stage, action="gate", reason=decision["reason"], actor="gate",
        decision=decision,
    )  # fmt: skip


def promote(
    store: Store,
    ref: str,
    stage: str,
    *,
    reason: str = "",
    actor: str = "",
    override: bool = False,
) -> ModelRecord:
    """A release manager's move, through the store's transition rules: staging -> production
    (the previous production is archived), any version -> archived; a version the gate did not
    stage reaches staging or production only with `override` and a reason."""
    action = "override" if override else ("archive" if stage == "archived" else "promote")
    if not override:  # an override's reason is the user's own words, or it is refused
        reason = reason or f"moved to {stage}"
    return store.set_stage(ref, stage, reason=reason, actor=actor, action=action)
