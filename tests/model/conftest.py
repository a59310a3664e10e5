"""One model trained once per test session on 20k ai4i rows, shared by the behaviour tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from mlops.params import PrepareParams, TrainParams
from pipelines.model import Predictor, load_predictor, save_model
from pipelines.prepare import PreparedData, prepare
from pipelines.sources import AI4I_SPEC, generate_ai4i
from pipelines.train import TrainResult, train_model

ROWS, SEED = 20_000, 7
PARAMS = TrainParams(epochs=15, patience=5, device="cpu")


@dataclass(frozen=True)
class Trained:
    data: PreparedData
    result: TrainResult
    predictor: Predictor


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    data = prepare({"ai4i-fixed": generate_ai4i(ROWS, SEED)}, AI4I_SPEC, PrepareParams())
    result = train_model(data, PARAMS, progress=False)
    path = save_model(
        Path(tmp_path_factory.mktemp("model")),
        config=result.config,
        preprocessor=data.preprocessor,
        spec=data.spec,
        model=result.model,
    )
    return Trained(data, result, load_predictor(path))
