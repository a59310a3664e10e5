"""Behaviour of a trained model: it beats the baseline and ignores what it must not see."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pipelines.evaluate import baseline_scores, evaluate_predictor, evaluate_scores

Trained = Any  # the `trained` fixture of tests/model/conftest.py

pytestmark = pytest.mark.slow

BANNED = ("UDI", "Product ID", "TWF", "HDF", "PWF", "OSF", "RNF")


def test_beats_the_logistic_baseline_on_failure_pr_auc(trained: Trained) -> None:
    # the network must earn its keep: failures follow thresholds a linear model cannot draw
    test = trained.data.test
    model = evaluate_predictor(trained.predictor, test)
    base = evaluate_scores(
        "classification",
        test["Machine failure"].to_numpy(),
        baseline_scores(trained.data),
        trained.data.preprocessor.classes,
    )
    assert model["positive_class"] == 1  # the failure class
    assert model["pr_auc"] > base["pr_auc"] + 0.1
    assert model["roc_auc"] > base["roc_auc"]
    print(f"\n20k rows: model PR-AUC {model['pr_auc']:.4f} vs baseline {base['pr_auc']:.4f}")


def test_beats_the_base_rate(trained: Trained) -> None:
    # a model that ranks at random has PR-AUC near the failure rate (~3-4 %)
    m = evaluate_predictor(trained.predictor, trained.data.test)
    assert m["pr_auc"] > 5 * trained.data.test["Machine failure"].mean()


def test_ids_and_failure_flags_are_not_inputs(trained: Trained) -> None:
    # label leak: the failure-mode flags spell out the label; ids would be memorised
    pre = trained.predictor.preprocessor
    assert not set(BANNED) & set(pre.input_columns)
    assert not any(name.split("=")[0] in BANNED for name in pre.feature_names)
    assert trained.result.config.n_inputs == pre.n_features


@pytest.mark.parametrize("column", BANNED)
def test_permuting_an_excluded_column_leaves_predictions_unchanged(
    trained: Trained, column: str
) -> None:
    # invariance: whatever these columns hold, the model must not react
    test = trained.data.test
    rng = np.random.default_rng(0)
    shuffled = test.assign(**{column: rng.permutation(test[column].to_numpy())})
    np.testing.assert_array_equal(
        trained.predictor.scores(test), trained.predictor.scores(shuffled)
    )


def test_dropping_excluded_columns_is_harmless(trained: Trained) -> None:
    # serving receives no labels or failure flags at all
    test = trained.data.test
    bare = test.drop(columns=[*BANNED, "Machine failure", "_batch"])
    np.testing.assert_array_equal(trained.predictor.scores(test), trained.predictor.scores(bare))


def test_permuting_a_real_feature_changes_predictions(trained: Trained) -> None:
    # the invariance tests above would pass for a constant model: this one would not
    test = trained.data.test
    rng = np.random.default_rng(0)
    shuffled = test.assign(**{"Torque [Nm]": rng.permutation(test["Torque [Nm]"].to_numpy())})
    assert not np.allclose(trained.predictor.scores(test), trained.predictor.scores(shuffled))
