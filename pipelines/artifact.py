"""The model folder: what training and compression write, and what serving reads WITHOUT torch.

A model directory holds everything needed to rebuild and run the model without training code:
    manifest.json      format, runtime ("torch" or "onnx"), the input and output schema, the
                       versions of the runtimes, and the sha256 of every other file
    config.json        ModelConfig: the architecture
    preprocessor.json  Preprocessor: scaling, one-hot categories, label classes
    spec.json          the data set's spec (target, features, ids, excluded, positive class)
    weights.pt         state_dict (runtime torch), loaded with weights_only=True
    model.onnx         the graph (runtime onnx)

Loading verifies every file against the manifest's sha256 and refuses a tampered or truncated
one. An ONNX model loads and predicts with onnxruntime alone: this module never imports torch
(the torch runtime imports it when, and only when, a torch model is loaded).
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property, partial
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd

from mlops.errors import MlopsError
from pipelines.sources import DatasetSpec
from pipelines.sources import label_key as _key

FORMAT_VERSION = 2
Runtime = Literal["torch", "onnx"]
ONNX_INPUT, ONNX_OUTPUT = "x", "y"
MANIFEST = "manifest.json"
_NO_CATEGORY = "\x00missing"
_MAX_STDS = 1e9  # serving refuses a reading further than this from the training mean


@dataclass(frozen=True)
class ModelConfig:
    """The architecture of a tabular MLP."""

    task: Literal["classification", "regression"]
    n_inputs: int
    hidden: tuple[int, ...]
    n_outputs: int  # number of classes, or 1 for regression
    dropout: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "hidden": list(self.hidden)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        return cls(
            task=d["task"],
            n_inputs=int(d["n_inputs"]),
            hidden=tuple(int(h) for h in d["hidden"]),
            n_outputs=int(d["n_outputs"]),
            dropout=float(d.get("dropout", 0.0)),
        )


class InputError(MlopsError):
    """A record serving must refuse: names the field and the rule it broke (a 4xx, never a 500)."""

    def __init__(self, field: str, rule: str, detail: str) -> None:
        self.field, self.rule = field, rule
        super().__init__(f"field {field!r}: {rule}: {detail}")


@dataclass(frozen=True)
class Preprocessor:
    """Standard scaling of numeric features and one-hot encoding of categories, fit on train only.

    Two entry points share one encoding: `transform` (training, evaluation) puts a missing
    reading at the training mean and an unseen category at all zeros, since validation is where
    they are flagged; `transform_strict` (serving) refuses both, naming the field and the rule.
    """

    task: Literal["classification", "regression"]
    target: str
    numeric: tuple[str, ...]
    means: tuple[float, ...]
    stds: tuple[float, ...]
    categories: dict[str, list[str]] = field(default_factory=dict)
    classes: list[Any] = field(default_factory=list)  # label values, index = class id
    target_mean: float = 0.0
    target_std: float = 1.0

    @classmethod
    def fit(cls, frame: pd.DataFrame, spec: DatasetSpec) -> Preprocessor:
        numeric = tuple(c for c in spec.features if c not in spec.categorical)
        values = frame[list(numeric)].astype("float64")
        stds = values.std(ddof=0).replace(0.0, 1.0).fillna(1.0)
        categories = {
            c: sorted(str(v) for v in frame[c].dropna().unique()) for c in spec.categorical
        }
        y = frame[spec.target]
        make = partial(
            cls, spec.task, spec.target, numeric, tuple(values.mean().fillna(0.0)), tuple(stds),
            categories,
        )  # fmt: skip
        if spec.task == "classification":
            classes = sorted(y.dropna().unique().tolist(), key=str)
            return make(classes=[_plain(c) for c in classes])
        return make(target_mean=float(y.mean()), target_std=float(y.std(ddof=0) or 1.0))

    @property
    def feature_names(self) -> list[str]:
        one_hot = [f"{c}={v}" for c, vals in self.categories.items() for v in vals]
        return [*self.numeric, *one_hot]

    @property
    def input_columns(self) -> list[str]:
        return [*self.numeric, *self.categories]

    @property
    def n_features(self) -> int:
        return len(self.numeric) + sum(len(v) for v in self.categories.values())

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        return self._encode(frame, strict=False)

    def transform_strict(self, frame: pd.DataFrame) -> np.ndarray:
        """As `transform`, but a missing field, a NaN, an infinity, a non-number or an unseen
        category raises InputError naming the field and the rule instead of being replaced."""
        return self._encode(frame, strict=True)

    def encode_records(
        self, records: list[dict[str, Any]], nullable: frozenset[str] = frozenset()
    ) -> np.ndarray:
        """Already type-checked records (dicts keyed by column) to the same matrix
        `transform_strict` makes from a frame, without building one (see `encode_columns`)."""
        columns: dict[str, list[Any]] = {}
        for col in self.input_columns:
            try:
                columns[col] = [r[col] for r in records]
            except KeyError:
                raise InputError(col, "required", "the field is missing") from None
        return self.encode_columns(columns, len(records), nullable)[0]

    def encode_columns(
        self,
        columns: Mapping[str, Sequence[Any]],
        n: int,
        nullable: frozenset[str] = frozenset(),
    ) -> tuple[np.ndarray, np.ndarray]:
        """Serving's fast path: n type-checked records given as columns (column -> values) to
        the model's input matrix (float32), and the numeric readings as they came (float64,
        n x len(numeric), NaN where a nullable reading is null) for the prediction log. A None
        in a `nullable` column is imputed as `transform` does; anywhere else it is an
        InputError, as are a non-number, an infinity and an unseen category."""
        raw = self._readings(columns, n, nullable)
        num = (raw - self._means) / self._stds
        # The model computes in float32: a reading absurdly far from anything seen in training
        # would overflow there and come back as NaN. Refuse it instead.
        huge = np.abs(num) > _MAX_STDS  # NaN compares False
        if huge.any():
            col = self.numeric[int(huge.any(axis=0).argmax())]
            raise InputError(
                col,
                "range",
                f"more than {_MAX_STDS:.0e} training standard deviations from the mean",
            )
        x = np.zeros((n, self.n_features), dtype=np.float32)
        x[:, : len(self.numeric)] = np.nan_to_num(num, nan=0.0)  # null: the training mean
        start = len(self.numeric)
        rows = np.arange(n)
        for col, values in self.categories.items():
            index = self._category_index[col]
            try:
                given = columns[col]
            except KeyError:
                raise InputError(col, "required", "the field is missing") from None
            codes = [
                -1 if v is None else index.get(v if type(v) is str else str(v), -1) for v in given
            ]
            if -1 in codes:  # None, or a value training never saw
                for i, v in enumerate(given):
                    if v is None:
                        if col in nullable:
                            continue
                        raise InputError(col, "required", "a value is missing (null)")
                    if codes[i] == -1:
                        raise InputError(col, "unseen category", f"{v!r} is not one of {values}")
                keep = np.asarray(codes) >= 0
                x[rows[keep], start + np.asarray(codes)[keep]] = 1.0
            else:
                x[rows, start + np.asarray(codes)] = 1.0
            start += len(values)
        return x, raw

    def _readings(
        self, columns: Mapping[str, Sequence[Any]], n: int, nullable: frozenset[str]
    ) -> np.ndarray:
        """The numeric columns as floats (None -> NaN), each refused value named."""
        try:
            given = [columns[c] for c in self.numeric]
        except KeyError as exc:
            raise InputError(str(exc.args[0]), "required", "the field is missing") from None
        try:
            raw = np.array(given, dtype=np.float64).reshape(len(self.numeric), n).T
        except (OverflowError, TypeError, ValueError):
            raw = None  # find the column and the value below
        if raw is None or not np.isfinite(raw).all():
            for j, col in enumerate(self.numeric):
                column = given[j]
                if col not in nullable and any(v is None for v in column):
                    raise InputError(col, "required", "a value is missing (null)")
                try:
                    values = np.asarray(column, dtype=np.float64)  # None -> nan
                except OverflowError:
                    raise InputError(col, "range", "a number too large for a reading") from None
                except (TypeError, ValueError):
                    bad = next(v for v in column if v is not None and not _is_number(v))
                    raise InputError(col, "type", f"{bad!r} is not a number") from None
                if np.isinf(values).any():
                    raise InputError(col, "finite", "infinity is not a reading")
        assert raw is not None
        return raw

    @cached_property
    def _means(self) -> np.ndarray:
        return np.asarray(self.means, dtype=np.float64)

    @cached_property
    def _stds(self) -> np.ndarray:
        return np.asarray(self.stds, dtype=np.float64)

    @cached_property
    def _category_index(self) -> dict[str, dict[str, int]]:
        return {c: {v: i for i, v in enumerate(vals)} for c, vals in self.categories.items()}

    def _encode(self, frame: pd.DataFrame, *, strict: bool) -> np.ndarray:
        missing = [c for c in self.input_columns if c not in frame.columns]
        if missing:
            if strict:
                raise InputError(missing[0], "required", "the field is missing")
            raise MlopsError(f"input is missing feature column(s): {', '.join(missing)}")
        if strict:
            num = np.empty((len(frame), len(self.numeric)), dtype=np.float64)
            for j, col in enumerate(self.numeric):
                num[:, j] = _strict_numbers(frame[col], col)
        else:
            num = frame[list(self.numeric)].to_numpy(dtype=np.float64, na_value=np.nan)
        num = (num - np.asarray(self.means)) / np.asarray(self.stds)
        parts = [np.nan_to_num(num, nan=0.0)]  # (strict: nothing left to replace)
        for col, values in self.categories.items():
            # A missing category matches no known one (NA would compare as "unknown").
            codes = frame[col].astype("string").fillna(_NO_CATEGORY).to_numpy(dtype=object)
            onehot = codes[:, None] == np.asarray(values, dtype=object)[None, :]
            if strict:
                unseen = ~onehot.any(axis=1)
                if unseen.any():
                    bad = frame[col].to_numpy()[unseen][0]
                    rule = "required" if pd.isna(bad) else "unseen category"
                    raise InputError(col, rule, f"{bad!r} is not one of {values}")
            parts.append(onehot.astype(np.float64))
        return np.concatenate(parts, axis=1).astype(np.float32)

    def encode_target(self, series: pd.Series) -> np.ndarray:
        if self.task == "classification":
            index = {_key(c): i for i, c in enumerate(self.classes)}
            unknown = [v for v in series.unique() if _key(v) not in index]
            if unknown:
                raise MlopsError(f"target {self.target!r} has labels unseen in training: {unknown}")
            return np.asarray([index[_key(v)] for v in series], dtype=np.int64)
        return ((series.to_numpy(dtype=np.float64) - self.target_mean) / self.target_std).astype(
            np.float32
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["numeric"], d["means"], d["stds"] = list(self.numeric), list(self.means), list(self.stds)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessor:
        return cls(
            task=d["task"],
            target=d["target"],
            numeric=tuple(d["numeric"]),
            means=tuple(d["means"]),
            stds=tuple(d["stds"]),
            categories=dict(d["categories"]),
            classes=list(d["classes"]),
            target_mean=float(d["target_mean"]),
            target_std=float(d["target_std"]),
        )


def _strict_numbers(s: pd.Series, col: str) -> np.ndarray:
    try:
        values = pd.to_numeric(s, errors="raise").to_numpy(dtype=np.float64, na_value=np.nan)
    except (ValueError, TypeError):
        bad = next(v for v in s if not _is_number(v))
        raise InputError(col, "type", f"{bad!r} is not a number") from None
    if np.isnan(values).any():
        raise InputError(col, "required", "a value is missing (null or NaN)")
    if np.isinf(values).any():
        raise InputError(col, "finite", "infinity is not a reading")
    return values


def _is_number(v: Any) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return not isinstance(v, bool)


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


# -- the schema a model carries -----------------------------------------------------------------


def model_schema(frame: pd.DataFrame, spec: DatasetSpec, pre: Preprocessor) -> dict[str, Any]:
    """Input and output schema from the training frame: each feature's name, kind, nullability,
    category set and training range; the classes and positive class, or the target's range."""
    inputs = []
    for col in pre.input_columns:
        s = frame[col]
        entry: dict[str, Any] = {"name": col, "nullable": bool(s.isna().any())}
        if col in pre.categories:
            entry.update(dtype="category", categories=list(pre.categories[col]))
        else:
            finite = pd.to_numeric(s, errors="coerce").replace([np.inf, -np.inf], np.nan).dropna()
            integer = pd.api.types.is_integer_dtype(s)
            entry.update(
                dtype="integer" if integer else "number",
                range=[_json_number(finite.min()), _json_number(finite.max())]
                if len(finite)
                else None,
            )
        inputs.append(entry)
    y = frame[spec.target]
    output: dict[str, Any] = {"task": spec.task, "target": spec.target}
    if spec.task == "classification":
        output.update(classes=list(pre.classes), positive_class=spec.positive_class)
    else:
        output.update(range=[_json_number(y.min()), _json_number(y.max())], unit=None)
    return {"input": inputs, "output": output}


def _json_number(v: Any) -> float | int | None:
    v = _plain(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def runtime_versions(runtime: Runtime, onnx_bytes: bytes | None = None) -> dict[str, Any]:
    """The versions a model was written with: Python, numpy, and its runtime's."""
    out: dict[str, Any] = {"python": platform.python_version(), "numpy": np.__version__}
    for dist in ("torch",) if runtime == "torch" else ("onnxruntime", "onnx"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    if onnx_bytes is not None:
        import onnx

        model = onnx.load_from_string(onnx_bytes)
        opsets = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
        out["onnx_opset"] = max(opsets, default=None)
    return out


# -- the manifest and its checksums -------------------------------------------------------------


def model_folder(path: Path) -> Path:
    """A registered version's folder holds `model/`; a bare model folder is itself."""
    return path / "model" if (path / "model" / MANIFEST).is_file() else path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_hashes(path: Path) -> dict[str, str]:
    """sha256 of every file in a model folder but the manifest (and temporary files)."""
    return {
        p.name: sha256_file(p)
        for p in sorted(path.iterdir())
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
    }


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((path / MANIFEST).read_text()))
    except FileNotFoundError:
        raise MlopsError(f"{path} is not a model directory (no {MANIFEST})") from None
    except json.JSONDecodeError as exc:
        raise MlopsError(
            f"{path / MANIFEST} is not valid JSON ({exc.msg}): tampered or truncated"
        ) from None


def verify_model(path: Path) -> dict[str, Any]:
    """The manifest, once every file it lists has its recorded sha256; else a one-line
    MlopsError naming the file. A manifest written before checksums existed has nothing to
    check against, and is said to be so."""
    manifest = read_manifest(path)
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise MlopsError(
            f"{path}: the manifest (format {manifest.get('format')}) has no checksums to verify"
        )
    for name, expected in files.items():
        f = path / name
        if not f.is_file():
            raise MlopsError(f"{path}: {name} is missing (the manifest lists it)")
        if sha256_file(f) != expected:
            raise MlopsError(
                f"{path}: {name} does not match its sha256 in the manifest (tampered or truncated)"
            )
    return manifest


# -- running a saved model -------------------------------------------------------------------


class _Engine(Protocol):
    def __call__(self, x: np.ndarray) -> np.ndarray: ...


class Predictor:
    """Runs a saved model on raw data frames, whatever its runtime."""

    def __init__(
        self,
        path: Path,
        config: ModelConfig,
        preprocessor: Preprocessor,
        spec: DatasetSpec,
        runtime: Runtime,
        engine: _Engine,
        manifest: dict[str, Any] | None = None,
    ) -> None:
        self.path, self.config, self.preprocessor, self.spec = path, config, preprocessor, spec
        self.runtime, self._engine = runtime, engine
        self.manifest = manifest or {}

    def raw(self, x: np.ndarray) -> np.ndarray:
        """Model outputs (logits or scaled target) for already preprocessed inputs."""
        return self._engine(np.ascontiguousarray(x, dtype=np.float32))

    def scores(self, frame: pd.DataFrame, *, strict: bool = False) -> np.ndarray:
        """Class probabilities (n, classes), or predictions in target units (n,). `strict`
        refuses bad input (InputError) instead of imputing it: what serving uses."""
        pre = self.preprocessor
        x = pre.transform_strict(frame) if strict else pre.transform(frame)
        return outputs_to_scores(self.raw(x), pre)

    def scores_from_inputs(self, x: np.ndarray) -> np.ndarray:
        """Probabilities or target-unit predictions for preprocessed inputs."""
        return outputs_to_scores(self.raw(x), self.preprocessor)

    def labels(self, scores: np.ndarray) -> np.ndarray:
        """Predicted labels (classification: the most probable class) from `scores`."""
        if self.config.task == "classification":
            return np.asarray(self.preprocessor.classes, dtype=object)[scores.argmax(axis=1)]
        return scores

    def predict(self, frame: pd.DataFrame, *, strict: bool = False) -> np.ndarray:
        return self.labels(self.scores(frame, strict=strict))


def outputs_to_scores(out: np.ndarray, pre: Preprocessor) -> np.ndarray:
    if pre.task == "classification":
        z = out - out.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)
    return out.reshape(-1) * pre.target_std + pre.target_mean


def load_predictor(path: Path, *, threads: int | None = None, verify: bool = True) -> Predictor:
    """Rebuild a saved model for inference on the CPU, whatever its runtime; with `verify`
    (the default) every file is checked against the manifest's sha256 first."""
    path = Path(path)
    manifest = read_manifest(path)
    if verify and "files" in manifest:  # format 1 folders predate checksums
        manifest = verify_model(path)
    config = ModelConfig.from_dict(json.loads((path / "config.json").read_text()))
    pre = Preprocessor.from_dict(json.loads((path / "preprocessor.json").read_text()))
    spec = DatasetSpec.from_dict(json.loads((path / "spec.json").read_text()))
    runtime = manifest["runtime"]
    engine: _Engine
    if runtime == "torch":
        from pipelines.model import torch_engine  # torch only for a torch model

        engine = torch_engine(path)
    elif runtime == "onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        session = ort.InferenceSession(
            str(path / manifest["weights"]), opts, providers=["CPUExecutionProvider"]
        )

        def engine(x: np.ndarray) -> np.ndarray:
            return session.run([ONNX_OUTPUT], {ONNX_INPUT: x})[0]

    else:
        raise MlopsError(f"{path}: unknown model runtime {runtime!r}")
    return Predictor(path, config, pre, spec, runtime, engine, manifest)
