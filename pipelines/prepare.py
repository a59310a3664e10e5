"""Prepare: join the selected batches, split them into train/val/test, fit the preprocessor.

A row's split comes from a hash of (seed, batch id, row key), never from a shuffle of the whole
table: adding a batch leaves every existing row in the split it was in, so the test split of
yesterday's model stays unseen by today's. The preprocessor is fit on the train split only.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlops.errors import MlopsError
from mlops.io import atomic_write_bytes, atomic_write_json
from mlops.params import PrepareParams
from pipelines.model import Preprocessor
from pipelines.sources import DatasetSpec

SPLITS = ("train", "val", "test")
BATCH_COLUMN = "_batch"


@dataclass(frozen=True)
class PreparedData:
    """The three splits (raw columns plus `_batch`), the spec and the train-fit preprocessor."""

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    spec: DatasetSpec
    preprocessor: Preprocessor

    def split(self, name: str) -> pd.DataFrame:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


def row_keys(frame: pd.DataFrame, spec: DatasetSpec) -> list[str]:
    """A stable key per row: its id columns when the spec has them, else its position."""
    ids = [c for c in spec.id_columns if c in frame.columns]
    if not ids:
        return [str(i) for i in range(len(frame))]
    values = frame[ids].astype("string").fillna("<NA>")
    return ["\x1f".join(row) for row in values.itertuples(index=False, name=None)]


def check_finite(frame: pd.DataFrame, spec: DatasetSpec, where: str) -> None:
    """Refuses inf and -inf in numeric features and the target: one would make every loss and
    metric NaN (validation flags them too; this is the second line of defence)."""
    bad = {}
    for col in dict.fromkeys([*spec.features, spec.target]):
        if col not in frame.columns or col in spec.categorical:
            continue
        s = frame[col]
        if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            n = int(np.isinf(s.to_numpy(dtype=np.float64, na_value=np.nan)).sum())
            if n:
                bad[col] = n
    if bad:
        listed = ", ".join(f"{c!r} ({n} row(s))" for c, n in bad.items())
        raise MlopsError(
            f"{where}: non-finite values (inf or -inf) in {listed}: training needs finite "
            "numbers; fix the source and ingest it again"
        )


def assign_splits(
    batch_id: str, keys: list[str], *, val_fraction: float, test_fraction: float, seed: int
) -> np.ndarray:
    """Split names for rows of one batch, each decided by a hash of (seed, batch, key) alone."""
    u = np.empty(len(keys), dtype=np.float64)
    prefix = f"{seed}\x1e{batch_id}\x1e".encode()
    for i, key in enumerate(keys):
        digest = hashlib.blake2b(prefix + key.encode(), digest_size=8).digest()
        u[i] = int.from_bytes(digest, "big") / 2.0**64
    return np.where(
        u < test_fraction, "test", np.where(u < test_fraction + val_fraction, "val", "train")
    )


def prepare(
    frames: Mapping[str, pd.DataFrame], spec: DatasetSpec, params: PrepareParams
) -> PreparedData:
    """Join batches (keys are batch ids), split them deterministically, fit the preprocessor."""
    if not frames:
        raise MlopsError(f"no batches of data set '{spec.name}' to prepare")
    parts = []
    for batch_id in sorted(frames):
        frame = frames[batch_id]
        spec.check(frame, f"batch {batch_id}")
        check_finite(frame, spec, f"batch {batch_id}")
        frame = frame.reset_index(drop=True)
        split = assign_splits(
            batch_id,
            row_keys(frame, spec),
            val_fraction=params.val_fraction,
            test_fraction=params.test_fraction,
            seed=params.seed,
        )
        parts.append(frame.assign(**{BATCH_COLUMN: batch_id, "_split": split}))
    joined = pd.concat(parts, ignore_index=True)
    # A row without a label teaches nothing and cannot be scored; serving never sees labels.
    joined = joined[joined[spec.target].notna()]
    if spec.task == "regression" and not pd.api.types.is_numeric_dtype(joined[spec.target]):
        raise MlopsError(f"target '{spec.target}' is not numeric ({joined[spec.target].dtype})")

    splits = {
        name: joined[joined["_split"] == name].drop(columns="_split").reset_index(drop=True)
        for name in SPLITS
    }
    empty = [name for name, frame in splits.items() if frame.empty]
    if empty:
        raise MlopsError(
            f"{len(joined)} labelled row(s) are too few to split: the {'/'.join(empty)} "
            f"split would be empty (ingest more rows)"
        )
    train = splits["train"]
    if spec.task == "classification" and train[spec.target].nunique() < 2:
        raise MlopsError(
            f"the train split has a single class of '{spec.target}' "
            f"({train[spec.target].iloc[0]!r}): nothing to learn"
        )
    return PreparedData(
        train=train,
        val=splits["val"],
        test=splits["test"],
        spec=spec,
        preprocessor=Preprocessor.fit(train, spec),
    )


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    # Same frame, same bytes: DVC then sees an unchanged output and skips the stages after it.
    frame.to_parquet(buf, index=False, compression="snappy", engine="pyarrow")
    return buf.getvalue()


def save_prepared(data: PreparedData, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        atomic_write_bytes(out_dir / f"{name}.parquet", _parquet_bytes(data.split(name)))
    atomic_write_json(out_dir / "spec.json", data.spec.to_dict())
    atomic_write_json(out_dir / "preprocessor.json", data.preprocessor.to_dict())


def load_prepared(out_dir: Path) -> PreparedData:
    try:
        frames = {name: pd.read_parquet(out_dir / f"{name}.parquet") for name in SPLITS}
        spec = DatasetSpec.from_dict(json.loads((out_dir / "spec.json").read_text()))
        pre = Preprocessor.from_dict(json.loads((out_dir / "preprocessor.json").read_text()))
    except FileNotFoundError as exc:
        raise MlopsError(
            f"{out_dir} holds no prepared data ({Path(exc.filename).name} missing)"
        ) from None
    return PreparedData(frames["train"], frames["val"], frames["test"], spec, pre)


def read_selection(path: Path) -> dict[str, Any]:
    """The batch selection `mlops train` wrote: data set, spec and batches (id, path, md5)."""
    try:
        selection = json.loads(path.read_text())
    except FileNotFoundError:
        raise MlopsError(
            f"no batch selection at {path}: run `mlops train`, not `dvc repro`, first"
        ) from None
    except json.JSONDecodeError as exc:
        raise MlopsError(f"{path} is not valid JSON ({exc.msg})") from None
    if not isinstance(selection, dict) or not {"spec", "batches"} <= selection.keys():
        raise MlopsError(f"{path}: expected keys 'spec' and 'batches'")
    return selection


def run_prepare_stage(
    root: Path, selection_path: Path, out_dir: Path, params: PrepareParams
) -> PreparedData:
    """The DVC stage: read the selected batches (checking their md5), prepare, save."""
    from pipelines.versioning import file_md5

    selection = read_selection(selection_path)
    spec = DatasetSpec.from_dict(selection["spec"])
    if spec.name != params.dataset:
        raise MlopsError(
            f"{selection_path.name} selects data set '{spec.name}' but prepare.dataset is "
            f"'{params.dataset}': run `mlops train` to select batches again"
        )
    frames = {}
    for batch in selection["batches"]:
        path = root / batch["path"]
        if not path.is_file():
            raise MlopsError(
                f"batch {batch['id']}: {batch['path']} is missing (`mlops data checkout`)"
            )
        # The selection names exact bytes: a file changed behind DVC's back is not that batch.
        if file_md5(path) != batch["md5"]:
            raise MlopsError(
                f"batch {batch['id']}: {batch['path']} does not match md5 {batch['md5']}"
            )
        frames[batch["id"]] = pd.read_parquet(path)
    data = prepare(frames, spec, params)
    save_prepared(data, out_dir)
    return data
