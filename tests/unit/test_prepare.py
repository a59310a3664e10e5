"""prepare(): deterministic, stable splits; preprocessing fit on train only; bad input."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlops.errors import MlopsError
from mlops.params import PrepareParams
from pipelines.prepare import assign_splits, load_prepared, prepare, save_prepared
from pipelines.sources import AI4I_SPEC, generate_ai4i

PARAMS = PrepareParams()


@pytest.fixture(scope="module")
def batch_a() -> pd.DataFrame:
    return generate_ai4i(1500, seed=1)


@pytest.fixture(scope="module")
def batch_b() -> pd.DataFrame:
    return generate_ai4i(1000, seed=2, start_udi=1501)


def _split_of(data, column: str = "UDI") -> dict[tuple[str, int], str]:
    return {
        (b, int(u)): name
        for name in ("train", "val", "test")
        for b, u in zip(data.split(name)["_batch"], data.split(name)[column], strict=True)
    }


def test_same_input_same_split(batch_a: pd.DataFrame) -> None:
    # reproducibility: the split is a function of the data and params, not of a random state
    one = prepare({"a": batch_a}, AI4I_SPEC, PARAMS)
    two = prepare({"a": batch_a.copy()}, AI4I_SPEC, PARAMS)
    for name in ("train", "val", "test"):
        pd.testing.assert_frame_equal(one.split(name), two.split(name))


def test_rows_keep_their_split_when_batches_are_added(
    batch_a: pd.DataFrame, batch_b: pd.DataFrame
) -> None:
    # test-set leakage: a row tested on yesterday must not be trained on today
    before = _split_of(prepare({"a": batch_a}, AI4I_SPEC, PARAMS))
    after = _split_of(prepare({"a": batch_a, "b": batch_b}, AI4I_SPEC, PARAMS))
    assert {k: v for k, v in after.items() if k[0] == "a"} == before
    assert len(after) == len(batch_a) + len(batch_b)


def test_splits_partition_the_rows(batch_a: pd.DataFrame) -> None:
    # lost or duplicated rows: every row lands in exactly one split
    data = prepare({"a": batch_a}, AI4I_SPEC, PARAMS)
    udis = pd.concat([data.train["UDI"], data.val["UDI"], data.test["UDI"]])
    assert sorted(udis) == sorted(batch_a["UDI"])


@pytest.mark.parametrize(("val", "test"), [(0.15, 0.2), (0.1, 0.1), (0.3, 0.4)])
def test_split_fractions(val: float, test: float) -> None:
    keys = [str(i) for i in range(20_000)]
    split = assign_splits("b", keys, val_fraction=val, test_fraction=test, seed=42)
    assert abs((split == "test").mean() - test) < 0.015
    assert abs((split == "val").mean() - val) < 0.015


def test_preprocessor_is_fit_on_train_only(batch_a: pd.DataFrame) -> None:
    # data leak: scaling statistics must not see the val/test rows
    data = prepare({"a": batch_a}, AI4I_SPEC, PARAMS)
    pre = data.preprocessor
    for col, mean in zip(pre.numeric, pre.means, strict=True):
        assert mean == pytest.approx(data.train[col].mean())
        assert mean != pytest.approx(batch_a[col].mean(), rel=1e-9)


def test_ids_and_excluded_columns_are_not_inputs(batch_a: pd.DataFrame) -> None:
    # label leak / memorised keys: UDI, Product ID and the failure-mode flags never reach the model
    pre = prepare({"a": batch_a}, AI4I_SPEC, PARAMS).preprocessor
    banned = {"UDI", "Product ID", "TWF", "HDF", "PWF", "OSF", "RNF", "Machine failure", "_batch"}
    assert not banned & set(pre.input_columns)
    assert not any(name.split("=")[0] in banned for name in pre.feature_names)


def test_save_and_load_round_trip(batch_a: pd.DataFrame, tmp_path: Path) -> None:
    data = prepare({"a": batch_a}, AI4I_SPEC, PARAMS)
    save_prepared(data, tmp_path / "p")
    back = load_prepared(tmp_path / "p")
    assert back.spec == data.spec and back.preprocessor == data.preprocessor
    for name in ("train", "val", "test"):
        pd.testing.assert_frame_equal(back.split(name), data.split(name))
    # identical bytes for identical data: DVC then skips the stages downstream
    first = (tmp_path / "p" / "train.parquet").read_bytes()
    save_prepared(data, tmp_path / "p")
    assert (tmp_path / "p" / "train.parquet").read_bytes() == first


def test_missing_target_is_a_one_line_error(batch_a: pd.DataFrame) -> None:
    # missing label: say which column and which batch
    with pytest.raises(MlopsError, match="Machine failure") as info:
        prepare({"a": batch_a.drop(columns=["Machine failure"])}, AI4I_SPEC, PARAMS)
    assert "\n" not in str(info.value) and "batch a" in str(info.value)


def test_too_few_rows(batch_a: pd.DataFrame) -> None:
    with pytest.raises(MlopsError, match="too few"):
        prepare({"a": batch_a.head(2)}, AI4I_SPEC, PARAMS)


def test_single_class(batch_a: pd.DataFrame) -> None:
    # nothing to learn: a train split with only healthy machines
    frame = batch_a.assign(**{"Machine failure": 0})
    with pytest.raises(MlopsError, match="single class"):
        prepare({"a": frame}, AI4I_SPEC, PARAMS)


def test_no_batches() -> None:
    with pytest.raises(MlopsError, match="no batches"):
        prepare({}, AI4I_SPEC, PARAMS)


def test_unlabelled_rows_are_dropped(batch_a: pd.DataFrame) -> None:
    frame = batch_a.astype({"Machine failure": "float64"})
    frame.loc[:9, "Machine failure"] = np.nan
    data = prepare({"a": frame}, AI4I_SPEC, PARAMS)
    assert len(data.train) + len(data.val) + len(data.test) == len(frame) - 10


def test_regression_target(batch_a: pd.DataFrame) -> None:
    spec = replace(
        AI4I_SPEC,
        name="wear",
        task="regression",
        positive_class=None,
        target="Tool wear [min]",
        features=tuple(f for f in AI4I_SPEC.features if f != "Tool wear [min]"),
    )
    data = prepare({"a": batch_a}, spec, PARAMS)
    assert data.preprocessor.task == "regression"
    assert data.preprocessor.target_mean == pytest.approx(data.train["Tool wear [min]"].mean())
