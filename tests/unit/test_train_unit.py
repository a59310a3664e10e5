"""The trainer's pieces: schedule, class weights, device choice, determinism, checkpoints."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import pipelines.train as train_mod
from mlops.errors import MlopsError
from mlops.params import EvaluateParams, PrepareParams, TrainParams
from pipelines.evaluate import evaluate_scores, primary_metric
from pipelines.prepare import PreparedData, prepare
from pipelines.sources import AI4I_SPEC, generate_ai4i
from pipelines.train import MIN_LR_FACTOR, class_weights, lr_factor, resolve_device, train_model

SMALL = TrainParams(hidden=[16], epochs=3, batch_size=64, patience=10, device="cpu")


@pytest.fixture(scope="module")
def data() -> PreparedData:
    return prepare({"b": generate_ai4i(800, seed=5)}, AI4I_SPEC, PrepareParams())


# -- pure helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "expected"),
    [(0, 0.1), (4, 0.5), (9, 1.0), (10, 1.0), (55, MIN_LR_FACTOR + (1 - MIN_LR_FACTOR) * 0.5)],
)
def test_lr_factor_warmup_then_cosine(step: int, expected: float) -> None:
    assert lr_factor(step, warmup_steps=10, total_steps=100) == pytest.approx(expected)


def test_lr_factor_decays_monotonically_to_the_floor() -> None:
    values = [lr_factor(s, warmup_steps=5, total_steps=50) for s in range(5, 60)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert values[-1] == pytest.approx(MIN_LR_FACTOR)


def test_lr_factor_without_warmup_starts_at_peak() -> None:
    assert lr_factor(0, warmup_steps=0, total_steps=10) == 1.0


def test_class_weights_are_balanced() -> None:
    # imbalance: 3 % failures must weigh as much in total as the 97 % healthy rows
    y = torch.tensor([0] * 97 + [1] * 3)
    w = class_weights(y, 2)
    assert (w[0] * 97).item() == pytest.approx((w[1] * 3).item())


def test_cuda_without_cuda_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(MlopsError, match="no CUDA"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


@pytest.mark.parametrize(
    ("task", "metric", "higher"),
    [("classification", "pr_auc", True), ("regression", "rmse", False)],
)
def test_primary_metric(task: str, metric: str, higher: bool) -> None:
    assert primary_metric(task, EvaluateParams()) == (metric, higher)


def test_evaluate_scores_classification() -> None:
    y = np.array([0, 0, 0, 1, 1])
    perfect = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.2, 0.8], [0.1, 0.9]])
    m = evaluate_scores("classification", y, perfect, [0, 1])
    assert m["pr_auc"] == m["roc_auc"] == m["f1"] == 1.0
    assert m["positive_class"] == 1  # the minority class
    assert m["confusion_matrix"] == [[3, 0], [0, 2]]


def test_evaluate_scores_follow_the_spec_positive_class_not_the_split_minority() -> None:
    # The data set's positive class is "churn"; in this test split it happens to be the
    # majority. Precision, recall and F1 must still be about "churn".
    y = np.array(["churn", "churn", "churn", "stay"], dtype=object)
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])  # classes: churn, stay
    m = evaluate_scores("classification", y, scores, ["churn", "stay"], positive="churn")
    assert m["positive_class"] == "churn"
    assert m["recall"] == pytest.approx(2 / 3) and m["precision"] == 1.0
    default = evaluate_scores("classification", y, scores, ["churn", "stay"])
    assert default["positive_class"] == "stay"  # without a spec: the split's minority
    with pytest.raises(MlopsError, match="positive class 'x' is not among"):
        evaluate_scores("classification", y, scores, ["churn", "stay"], positive="x")


def test_evaluate_scores_regression() -> None:
    m = evaluate_scores("regression", np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]), [])
    assert m["rmse"] == pytest.approx(math.sqrt(1 / 3))
    assert m["mae"] == pytest.approx(1 / 3)


# -- training -------------------------------------------------------------------------------


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.state_dict())


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_same_seed_same_weights(data: PreparedData) -> None:
    one = train_model(data, SMALL, progress=False)
    two = train_model(data, SMALL, progress=False)
    _assert_same(_weights(one.model), _weights(two.model))
    assert [(h["train_loss"], h["val_loss"]) for h in one.history] == [
        (h["train_loss"], h["val_loss"]) for h in two.history
    ]
    other = train_model(data, replace_params(SMALL, seed=1), progress=False)
    assert not torch.equal(
        other.model.state_dict()["net.0.weight"], one.model.state_dict()["net.0.weight"]
    )


def replace_params(params: TrainParams, **changes: object) -> TrainParams:
    return params.model_copy(update=changes)


def test_loss_falls(data: PreparedData) -> None:
    result = train_model(data, replace_params(SMALL, epochs=6), progress=False)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.model.training is False
    assert next(result.model.parameters()).device.type == "cpu"


def test_regression_trains(data: PreparedData) -> None:
    spec = replace(
        AI4I_SPEC, name="torque", task="regression", target="Torque [Nm]", positive_class=None,
        features=tuple(f for f in AI4I_SPEC.features if f != "Torque [Nm]"),
    )  # fmt: skip
    frames = {"b": generate_ai4i(800, seed=5)}
    reg = prepare(frames, spec, PrepareParams())
    result = train_model(reg, replace_params(SMALL, epochs=6), progress=False)
    assert result.config.n_outputs == 1
    assert result.best_val_loss < 1.0  # MSE on the standardised target: better than the mean


class _Killed(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_weights(
    data: PreparedData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = replace_params(SMALL, epochs=5)
    straight = train_model(data, params, progress=False)

    real_save, saves = train_mod.save_checkpoint, []

    def save_then_die(path: Path, checkpoint: dict) -> None:  # type: ignore[type-arg]
        real_save(path, checkpoint)
        saves.append(path)
        if len(saves) == 2:
            raise _Killed

    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        train_model(data, params, checkpoint_dir=tmp_path, progress=False)
    monkeypatch.undo()

    # weights_only: the checkpoint is plain tensors and containers, no pickled objects
    ckpt = torch.load(saves[-1], weights_only=True)
    for key in ("model", "optimizer", "scheduler", "epoch", "best_val_loss", "best_model",
                "bad_epochs", "rng", "config", "params"):  # fmt: skip
        assert key in ckpt
    assert ckpt["epoch"] == 2 and set(ckpt["rng"]) >= {"torch", "numpy", "python", "loader"}

    resumed = train_model(data, params, checkpoint_dir=tmp_path, progress=False)
    assert resumed.resumed_from_epoch == 2
    _assert_same(_weights(straight.model), _weights(resumed.model))
    assert not list(tmp_path.glob("*.pt")), "a finished run removes its checkpoint"


def test_checkpoint_of_another_run_is_not_resumed(data: PreparedData, tmp_path: Path) -> None:
    # A different learning rate is a different run: its checkpoint is keyed apart.
    (tmp_path / "train-0000000000000000.pt").write_bytes(b"not a checkpoint")
    result = train_model(data, SMALL, checkpoint_dir=tmp_path, progress=False)
    assert result.resumed_from_epoch == 0
