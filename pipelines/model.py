"""The network and its torch runtime: what training builds and a torch model folder holds.

The model folder's contract (manifest, schema, checksums, the Preprocessor, the Predictor and
`load_predictor`) lives in `pipelines/artifact.py`, which never imports torch; its names are
importable from here too. `save_model` writes a folder for either runtime.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mlops.errors import MlopsError
from mlops.io import atomic_write_json
from pipelines.artifact import (
    FORMAT_VERSION,
    MANIFEST,
    ONNX_INPUT,
    ONNX_OUTPUT,
    InputError,
    ModelConfig,
    Predictor,
    Preprocessor,
    Runtime,
    file_hashes,
    load_predictor,
    model_schema,
    outputs_to_scores,
    read_manifest,
    runtime_versions,
    verify_model,
)
from pipelines.sources import DatasetSpec

__all__ = [
    "FORMAT_VERSION",
    "MLP",
    "ONNX_INPUT",
    "ONNX_OUTPUT",
    "InputError",
    "ModelConfig",
    "Predictor",
    "Preprocessor",
    "Runtime",
    "load_predictor",
    "load_torch_model",
    "model_schema",
    "outputs_to_scores",
    "quantize_dynamic_int8",
    "read_manifest",
    "save_model",
    "torch_engine",
    "verify_model",
]


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


def save_model(
    path: Path,
    *,
    config: ModelConfig,
    preprocessor: Preprocessor,
    spec: DatasetSpec,
    model: nn.Module | None = None,
    onnx_bytes: bytes | None = None,
    schema: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a model directory (torch state_dict or ONNX graph plus the JSON beside it), then
    its manifest: runtime, `schema` (see `model_schema`), versions and every file's sha256."""
    if (model is None) == (onnx_bytes is None):
        raise ValueError("save_model needs exactly one of model= or onnx_bytes=")
    path.mkdir(parents=True, exist_ok=True)
    runtime: Runtime = "torch" if model is not None else "onnx"
    weights = "weights.pt" if runtime == "torch" else "model.onnx"
    tmp = path / f".{weights}.tmp"
    if model is not None:
        # Updated in place to keep the state's _metadata (module versions): a dynamically
        # quantized model's state also holds packed (weight, bias) tuples and dtypes.
        state = model.state_dict()
        for k, v in state.items():
            if isinstance(v, torch.Tensor):
                state[k] = v.detach().cpu()
        torch.save(state, tmp)
    else:
        tmp.write_bytes(onnx_bytes or b"")
    tmp.replace(path / weights)
    atomic_write_json(path / "config.json", config.to_dict())
    atomic_write_json(path / "preprocessor.json", preprocessor.to_dict())
    atomic_write_json(path / "spec.json", spec.to_dict())
    manifest = {
        "format": FORMAT_VERSION,
        "runtime": runtime,
        "weights": weights,
        **(extra or {}),
        "schema": schema,
        "versions": runtime_versions(runtime, onnx_bytes),
        # Last, over the files as written: loading refuses any that differ.
        "files": file_hashes(path),
    }
    atomic_write_json(path / MANIFEST, manifest)
    return path


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
    quantization = read_manifest(path).get("quantization") if (path / MANIFEST).exists() else None
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


def torch_engine(path: Path) -> Any:
    """A function from preprocessed inputs to outputs, running the torch model at `path`."""
    model = load_torch_model(path)

    @torch.no_grad()
    def engine(x: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(x)).numpy()

    return engine
