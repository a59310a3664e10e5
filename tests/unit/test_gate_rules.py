"""The gate's rules in words (pipelines/gate.decide) on scores made here: a first model needs
to be no worse than the baseline (a tie passes, a perfect baseline can be matched), a new one
must be shown better than production, a compressed child stays within its parent's tolerance;
every decision says why and what to do next. On trained models: tests/integration/test_gate.py."""

from __future__ import annotations

import numpy as np
import pytest

from mlops.params import EvaluateParams
from pipelines.gate import Scored, decide

PARAMS = EvaluateParams(bootstrap_samples=300)


def _binary(n: int = 400, seed: int = 0, noise: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p1 = np.clip(y * 0.6 + 0.2 + rng.normal(scale=noise, size=n), 0.001, 0.999)
    return y, np.c_[1 - p1, p1]


def _decide(s: Scored, against: str, metric: str = "pr_auc", **kw: object) -> dict:
    higher = metric not in ("rmse", "mae")
    return decide(s, metric=metric, higher=higher, against=against, name=against,
                  candidate_ref="d:2", params=kw.pop("params", PARAMS), **kw)  # type: ignore[arg-type]  # fmt: skip


def test_a_tie_with_the_baseline_is_deployed() -> None:
    y, p = _binary()
    d = _decide(Scored("classification", y, p, p.copy(), 1), "baseline")
    assert d["rule"] == "noninferior" and d["margin"] == -0.01
    assert d["passed"] and d["outcome"] == "staged" and d["interval"] == [0.0, 0.0]
    assert "no worse than it" in d["reason"]
    assert d["next"] == "`mlops models promote d:2 --to production`"


def test_a_perfect_baseline_can_be_matched_and_is_reported_saturated() -> None:
    y = np.r_[np.zeros(60, int), np.ones(40, int)]
    perfect = np.c_[1 - y, y].astype(float)
    d = _decide(Scored("classification", y, perfect, perfect, 1), "baseline")
    assert d["saturated"] and d["passed"]
    assert d["reason"].startswith("the baseline scores a perfect pr_auc on this split")
    # the old rule (a strict point improvement) could never pass this one
    strict = _decide(Scored("classification", y, perfect, perfect, 1), "baseline",
                     params=PARAMS.model_copy(update={"rule": "point"}))  # fmt: skip
    assert not strict["passed"]


def test_clearly_worse_than_the_baseline_is_rejected_with_a_way_forward() -> None:
    y, good = _binary()
    _, bad = _binary(seed=1, noise=3.0)
    d = _decide(Scored("classification", y, bad, good, 1), "baseline")
    assert not d["passed"] and d["outcome"] == "rejected" and "worse than it" in d["reason"]
    assert "--set train.hidden=[]" in d["next"] and "--override --reason" in d["next"]


def test_against_production_a_tie_is_not_enough() -> None:
    y, p = _binary()
    d = _decide(Scored("classification", y, p, p.copy(), 1), "production")
    assert d["rule"] == "significant" and not d["passed"]
    assert "not shown better than it" in d["reason"] and "production stays" in d["next"]


def test_error_metrics_use_a_share_of_the_baselines_error() -> None:
    rng = np.random.default_rng(2)
    y = rng.normal(100, 10, 300)
    base = y + rng.normal(0, 5, 300)
    cand = base * 1.002  # 0.2% off: within 2% of the baseline's RMSE
    d = _decide(Scored("regression", y, cand, base, None), "baseline", metric="rmse")
    assert d["margin"] == pytest.approx(-0.02 * d["reference"])
    assert d["passed"], d["reason"]


def test_a_compressed_child_is_held_to_its_parents_tolerance() -> None:
    y, p = _binary()
    d = _decide(Scored("classification", y, p, p.copy(), 1), "parent", parent_tolerance=0.005)
    assert d["rule"] == "point" and d["margin"] == -0.005 and d["passed"]
    assert "within tolerance" in d["reason"]


def test_too_few_rows_is_inconclusive_and_says_what_to_do() -> None:
    y, p = _binary(n=30)
    d = _decide(Scored("classification", y, p, p, 1), "baseline")
    assert d["outcome"] == "inconclusive" and "too little evidence: 30 test rows" in d["reason"]
    assert "ingest more rows" in d["next"]
