"""The search's choice, on data whose answer is known: a linear target, where a linear model
(`hidden: []`) is all one needs, and lower RMSE is better."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlops.params import EvaluateParams, PrepareParams, TrainParams
from pipelines.prepare import save_prepared
from pipelines.search import choose, complete_candidates, score_candidate, score_sequentially
from pipelines.sources import DatasetSpec

NOISE = 0.1


@pytest.fixture(scope="module")
def linear_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """y = 3a - 2b + noise; c is irrelevant."""
    from pipelines.prepare import prepare

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 3))
    frame = pd.DataFrame(
        {"a": x[:, 0], "b": x[:, 1], "c": x[:, 2],
         "y": 3 * x[:, 0] - 2 * x[:, 1] + NOISE * rng.normal(size=len(x))}
    )  # fmt: skip
    spec = DatasetSpec(name="lin", task="regression", target="y", features=("a", "b", "c"),
                       categorical=(), id_columns=(), excluded=())  # fmt: skip
    out = tmp_path_factory.mktemp("prepared")
    save_prepared(prepare({"b1": frame}, spec, PrepareParams()), out)
    return out


BASE = TrainParams(
    device="cpu", epochs=30, lr=0.05, patience=30, dropout=0.0,
    search=[{"hidden": []}, {"hidden": [32], "epochs": 1, "lr": 0.0001}],
)  # fmt: skip


def test_a_linear_model_wins_on_a_linear_target(linear_data: Path) -> None:
    completed = complete_candidates(BASE)
    # every candidate names every searched key; the missing ones come from the section
    assert completed == [
        {"hidden": [], "epochs": 30, "lr": 0.05},
        {"hidden": [32], "epochs": 1, "lr": 0.0001},
    ]
    scores = score_sequentially(
        linear_data, [BASE.candidate(c) for c in completed], EvaluateParams()
    )
    rmse = [s.value for s in scores]
    assert rmse[0] is not None and rmse[1] is not None
    # logistic/linear regression reaches the noise floor; the barely trained network does not
    assert rmse[0] < 2 * NOISE < rmse[1]
    assert choose(rmse, higher_is_better=False) == 0


def test_candidates_in_threads_train_as_they_do_alone(linear_data: Path) -> None:
    """Threads of one process take turns (training sets process-wide torch state)."""
    # dropout draws from torch's global RNG every step: runs interleaved would share it
    overlap = {"dropout": 0.2, "epochs": 8, "batch_size": 32}
    params = [
        BASE.candidate({"hidden": [8], **overlap}),
        BASE.candidate({"hidden": [16], **overlap}),
    ]
    alone = [score_candidate(linear_data, p, EvaluateParams()).value for p in params * 2]
    with ThreadPoolExecutor(4) as pool:
        together = list(
            pool.map(lambda p: score_candidate(linear_data, p, EvaluateParams()).value, params * 2)
        )
    assert together == alone


@pytest.mark.parametrize(
    ("values", "higher", "best"),
    [
        ([0.2, 0.5, 0.4], True, 1),
        ([0.2, 0.5, 0.4], False, 0),
        ([None, 0.1, 0.3], True, 2),  # undefined ranks last
        ([0.3, 0.3, 0.1], True, 0),  # a tie goes to the candidate listed first
    ],
)
def test_choose(values: list[float | None], higher: bool, best: int) -> None:
    assert choose(values, higher) == best


def test_no_defined_score_is_an_error() -> None:
    from mlops.errors import MlopsError

    with pytest.raises(MlopsError, match="undefined on the validation split"):
        choose([None, None], True)
