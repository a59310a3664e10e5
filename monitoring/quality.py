"""Model quality where labels exist, as Evidently draws it: the window's labelled rows against
the reference's held-out rows, both scored by the serving version.

    snapshot = quality_report(reference, current, task="classification", positive="1")
    # frames: `target`, `prediction` (labels as text) and, for a binary model, `proba`
    # (P(positive)); for a regression, numeric `target` and `prediction`.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from mlops.errors import MlopsError

TARGET, PREDICTION, PROBA = "target", "prediction", "proba"


def quality_report(
    reference: pd.DataFrame, current: pd.DataFrame, *, task: str, positive: str | None = None
) -> Any:
    """Evidently's ClassificationPreset or RegressionPreset on the two frames; the snapshot."""
    from evidently import (
        BinaryClassification,
        DataDefinition,
        Dataset,
        MulticlassClassification,
        Regression,
        Report,
    )
    from evidently.presets import ClassificationPreset, RegressionPreset

    for label, frame in (("reference", reference), ("current", current)):
        if frame.empty:
            raise MlopsError(f"quality: the {label} has no labelled rows")
    if task == "regression":
        definition = DataDefinition(
            numerical_columns=[TARGET, PREDICTION],
            regression=[Regression(target=TARGET, prediction=PREDICTION)],
        )
        preset: Any = RegressionPreset()
        cols = [TARGET, PREDICTION]
    elif positive is not None:
        definition = DataDefinition(
            categorical_columns=[TARGET, PREDICTION],
            numerical_columns=[PROBA],
            classification=[
                BinaryClassification(
                    target=TARGET, prediction_labels=PREDICTION, prediction_probas=PROBA,
                    pos_label=positive,
                )
            ],
        )  # fmt: skip
        preset = ClassificationPreset()
        cols = [TARGET, PREDICTION, PROBA]
    else:
        definition = DataDefinition(
            categorical_columns=[TARGET, PREDICTION],
            classification=[MulticlassClassification(target=TARGET, prediction_labels=PREDICTION)],
        )
        preset = ClassificationPreset()
        cols = [TARGET, PREDICTION]

    def dataset(frame: pd.DataFrame) -> Any:
        return Dataset.from_pandas(frame[cols].reset_index(drop=True), data_definition=definition)

    return Report([preset], include_tests=False).run(dataset(current), dataset(reference))
