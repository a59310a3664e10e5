"""The model and its artifacts: what training writes and compression and serving read.

A model directory holds everything needed to rebuild and run the model without training code:
    manifest.json      runtime ("torch" or "onnx"), format version, file names
    config.json        ModelConfig: the architecture
    preprocessor.json  Preprocessor: scaling, one-hot categories, label classes
    spec.json          the data set's spec (target, features, ids, excluded)
    weights.pt         state_dict (runtime torch), loaded with weights_only=True
    model.onnx         the graph (runtime onnx)
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn

from mlops.errors import MlopsError
from mlops.io import atomic_write_json
from pipelines.sources import DatasetSpec
from pipelines.sources import label_key as _key

FORMAT_VERSION = 1
Runtime = Literal["torch", "onnx"]
ONNX_INPUT, ONNX_OUTPUT = "x", "y"


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


class MLP(nn.Module):
    """Linear -> ReLU -> Dropout blocks, then a linear head (logits or the scaled target)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = config.n_inputs
        for h in config.hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(config.dropout)]
            width = h
        layers.append(nn.Linear(width, config.n_outputs))
        self.net = nn.Sequential(*layers)
        self.config = config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass(frozen=True)
class Preprocessor:
    """Standard scaling of numeric features and one-hot encoding of categories, fit on train only.

    Unseen categories encode as all zeros rather than failing: validation is where they are
    flagged; serving must still answer.
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
        missing = [c for c in self.input_columns if c not in frame.columns]
        if missing:
            raise MlopsError(f"input is missing feature column(s): {', '.join(missing)}")
        num = frame[list(self.numeric)].to_numpy(dtype=np.float64, na_value=np.nan)
        num = (num - np.asarray(self.means)) / np.asarray(self.stds)
        parts = [np.nan_to_num(num, nan=0.0)]  # a missing reading sits at the training mean
        for col, values in self.categories.items():
            codes = frame[col].astype("string").to_numpy()
            parts.append((codes[:, None] == np.asarray(values)[None, :]).astype(np.float64))
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


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


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
    ) -> None:
        self.path, self.config, self.preprocessor, self.spec = path, config, preprocessor, spec
        self.runtime, self._engine = runtime, engine

    def raw(self, x: np.ndarray) -> np.ndarray:
        """Model outputs (logits or scaled target) for already preprocessed inputs."""
        return self._engine(np.ascontiguousarray(x, dtype=np.float32))

    def scores(self, frame: pd.DataFrame) -> np.ndarray:
        """Class probabilities (n, classes), or predictions in target units (n,)."""
        out = self.raw(self.preprocessor.transform(frame))
        return outputs_to_scores(out, self.preprocessor)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        s = self.scores(frame)
        if self.config.task == "classification":
            return np.asarray(self.preprocessor.classes, dtype=object)[s.argmax(axis=1)]
        return s


def outputs_to_scores(out: np.ndarray, pre: Preprocessor) -> np.ndarray:
    if pre.task == "classification":
        z = out - out.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)
    return out.reshape(-1) * pre.target_std + pre.target_mean


def save_model(
    path: Path,
    *,
    config: ModelConfig,
    preprocessor: Preprocessor,
    spec: DatasetSpec,
    model: nn.Module | None = None,
    onnx_bytes: bytes | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a model directory (torch state_dict or ONNX graph plus the JSON beside it)."""
    if (model is None) == (onnx_bytes is None):
        raise ValueError("save_model needs exactly one of model= or onnx_bytes=")
    path.mkdir(parents=True, exist_ok=True)
    runtime: Runtime = "torch" if model is not None else "onnx"
    weights = "weights.pt" if runtime == "torch" else "model.onnx"
    if model is not None:
        tmp = path / f".{weights}.tmp"
        # Updated in place to keep the state's _metadata (module versions): a dynamically
        # quantized model's state also holds packed (weight, bias) tuples and dtypes.
        state = model.state_dict()
        for k, v in state.items():
            if isinstance(v, torch.Tensor):
                state[k] = v.detach().cpu()
        torch.save(state, tmp)
        tmp.replace(path / weights)
    else:
        tmp = path / f".{weights}.tmp"
        tmp.write_bytes(onnx_bytes or b"")
        tmp.replace(path / weights)
    atomic_write_json(path / "config.json", config.to_dict())
    atomic_write_json(path / "preprocessor.json", preprocessor.to_dict())
    atomic_write_json(path / "spec.json", spec.to_dict())
    manifest = {"format": FORMAT_VERSION, "runtime": runtime, "weights": weights, **(extra or {})}
    atomic_write_json(path / "manifest.json", manifest)
    return path


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((path / "manifest.json").read_text()))
    except FileNotFoundError:
        raise MlopsError(f"{path} is not a model directory (no manifest.json)") from None


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """torch.ao dynamic int8: int8 Linear weights, activations quantized per call (CPU only)."""
    with warnings.catch_warnings():
        # Deprecated in favour of torchao, whose int8 path is GPU-oriented; this one still works.
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model.eval(), {nn.Linear}, dtype=torch.qint8)


def load_torch_model(path: Path) -> MLP:
    """The saved torch model; a `quantization: dynamic_int8` manifest gives the int8 module."""
    config = ModelConfig.from_dict(json.loads((path / "config.json").read_text()))
    model: nn.Module = MLP(config)
    quantization = (
        read_manifest(path).get("quantization") if (path / "manifest.json").exists() else None
    )
    if quantization == "dynamic_int8":
        model = quantize_dynamic_int8(model)
    elif quantization:
        raise MlopsError(f"{path}: unknown torch quantization {quantization!r}")
    with warnings.catch_warnings():
        # Rebuilding quantized tensors goes through torch's own TypedStorage shim.
        warnings.filterwarnings("ignore", "TypedStorage is deprecated", UserWarning)
        # weights_only: a model file is data, never code to run.
        state = torch.load(path / "weights.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()  # type: ignore[return-value]  # the int8 module runs as the MLP does


def load_predictor(path: Path, *, threads: int | None = None) -> Predictor:
    """Rebuild a saved model for inference on the CPU, whatever its runtime."""
    manifest = read_manifest(path)
    config = ModelConfig.from_dict(json.loads((path / "config.json").read_text()))
    pre = Preprocessor.from_dict(json.loads((path / "preprocessor.json").read_text()))
    spec = DatasetSpec.from_dict(json.loads((path / "spec.json").read_text()))
    runtime = manifest["runtime"]
    engine: _Engine
    if runtime == "torch":
        model = load_torch_model(path)

        @torch.no_grad()
        def engine(x: np.ndarray) -> np.ndarray:
            return model(torch.from_numpy(x)).numpy()

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
    return Predictor(path, config, pre, spec, runtime, engine)
