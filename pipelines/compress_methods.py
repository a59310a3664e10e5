"""The compression methods: each turns a trained MLP into a smaller or faster one.

Plain functions of models, arrays and settings; `pipelines/compress.py` measures the variants
and chooses one.
"""

from __future__ import annotations

import copy
import io
import itertools
import logging
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipelines.model import MLP, ONNX_INPUT, ONNX_OUTPUT, ModelConfig, quantize_dynamic_int8

__all__ = [
    "DistillData",
    "compact_onnx",
    "count_params",
    "distill",
    "export_onnx",
    "prune_structured",
    "quantize_dynamic_int8",
    "quantize_onnx_int8",
]


def count_params(config: ModelConfig) -> int:
    """Weights and biases of the MLP `config` describes (quantization keeps the count)."""
    widths = [config.n_inputs, *config.hidden, config.n_outputs]
    return sum((a + 1) * b for a, b in itertools.pairwise(widths))


def _linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


# -- ONNX -----------------------------------------------------------------------------------


def export_onnx(model: nn.Module, n_inputs: int) -> bytes:
    """The model as an ONNX graph with a dynamic batch axis (input "x", output "y")."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # dynamo=False: the TorchScript exporter handles this graph in ~0.1 s and needs no
        # onnxscript rewrite; its deprecation notice is not actionable here.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            copy.deepcopy(model).eval(),
            (torch.zeros(1, n_inputs),),
            buf,  # type: ignore[arg-type]  # a file object works; the stub says path only
            input_names=[ONNX_INPUT],
            output_names=[ONNX_OUTPUT],
            dynamic_axes={ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}},
            dynamo=False,
        )
    return buf.getvalue()


def compact_onnx(onnx_bytes: bytes) -> bytes:
    """The same graph with short tensor names, no node names and no shape annotations.

    For a small model the exporter's and quantizer's descriptive names ("/net/net.3/Gemm_
    MatMul_quant_output_scale_mul") weigh as much as the weights; ONNX Runtime needs none of
    them. The input and output keep their names.
    """
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, format(len(names), "x"))  # hex: never "x" or "y"

    for init in graph.initializer:
        init.name = short(init.name)
    for node in graph.node:
        node.name, node.doc_string = "", ""
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    del graph.value_info[:]
    model.doc_string = graph.doc_string = ""
    onnx.checker.check_model(model)
    return model.SerializeToString()


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    # onnxruntime.quantization calls logging.warning("Please consider to run pre-processing..."),
    # which would also install a root handler (basicConfig) in a process that has none.
    root = logging.getLogger()
    null, flt = logging.NullHandler(), logging.Filter("\0none")
    root.addHandler(null)
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)
        root.removeHandler(null)


def quantize_onnx_int8(onnx_bytes: bytes) -> bytes:
    """ONNX Runtime dynamic quantization: int8 weights, uint8 activations scaled per call."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="mlops-quant-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(onnx_bytes)
        with _quiet_root_logger():
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
        return dst.read_bytes()


# -- structured pruning ---------------------------------------------------------------------


def unit_scores(model: MLP, norm: str = "l2") -> list[torch.Tensor]:
    """Importance of each hidden unit: the norm of its incoming weights, bias and outgoing weights.

    A unit whose weights in and out are all small contributes little to the next layer, so it is
    the one to remove.
    """
    p = 1 if norm == "l1" else 2
    layers = _linears(model)
    scores = []
    for layer, nxt in itertools.pairwise(layers):
        w = torch.cat([layer.weight, layer.bias[:, None], nxt.weight.T], dim=1)
        scores.append(w.detach().norm(p=p, dim=1))
    return scores


@torch.no_grad()
def prune_structured(model: MLP, amount: float, norm: str = "l2") -> MLP:
    """A smaller MLP without the `amount` share of each hidden layer's weakest units.

    The layers really shrink (a new ModelConfig.hidden); the kept weights are copied unchanged.
    """
    keep = []
    for score in unit_scores(model, norm):
        n_keep = max(1, round(len(score) * (1.0 - amount)))
        keep.append(torch.topk(score, n_keep).indices.sort().values)
    config = replace(model.config, hidden=tuple(len(k) for k in keep))
    small = MLP(config)
    for i, (src, dst) in enumerate(zip(_linears(model), _linears(small), strict=True)):
        w: torch.Tensor = src.weight
        b: torch.Tensor = src.bias
        if i < len(keep):
            w, b = w[keep[i]], b[keep[i]]
        if i > 0:
            w = w[:, keep[i - 1]]
        dst.weight.copy_(w)
        dst.bias.copy_(b)
    return small.eval()


# -- distillation (also the fine-tune of a pruned model) ------------------------------------


@dataclass(frozen=True)
class DistillData:
    """Preprocessed train and validation arrays (targets encoded as the model was trained)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    class_weights: np.ndarray | None = None  # for the label term, as the teacher was trained


def _loss(
    out: torch.Tensor,
    teacher: torch.Tensor,
    y: torch.Tensor,
    *,
    task: str,
    temperature: float,
    alpha: float,
    class_weights: torch.Tensor | None,
) -> torch.Tensor:
    if task == "classification":
        t = temperature
        # KL on temperature-softened distributions; T^2 keeps its gradients on the label
        # term's scale (Hinton et al. 2015).
        soft = F.kl_div(
            F.log_softmax(out / t, dim=1), F.log_softmax(teacher / t, dim=1),
            reduction="batchmean", log_target=True,
        ) * (t * t)  # fmt: skip
        hard = F.cross_entropy(out, y, weight=class_weights)
    else:
        soft = F.mse_loss(out.reshape(-1), teacher.reshape(-1))
        hard = F.mse_loss(out.reshape(-1), y.reshape(-1))
    return alpha * soft + (1.0 - alpha) * hard


def distill(
    student: MLP,
    teacher: nn.Module,
    data: DistillData,
    *,
    epochs: int,
    temperature: float,
    alpha: float,
    lr: float,
    batch_size: int,
    seed: int,
) -> MLP:
    """Train `student` on the teacher's outputs (weight `alpha`) and the labels (1 - alpha).

    Classification: KL between softened distributions times T^2, plus cross-entropy on the
    labels; regression: MSE to the teacher's output plus MSE to the target. Keeps the weights
    of the epoch with the lowest validation loss. A pruned model is fine-tuned the same way,
    so it keeps agreeing with the model it was cut from.
    """
    torch.manual_seed(seed)
    task = student.config.task
    teacher = teacher.eval()
    x_tr, x_va = torch.from_numpy(data.x_train), torch.from_numpy(data.x_val)
    y_tr, y_va = torch.from_numpy(data.y_train), torch.from_numpy(data.y_val)
    with torch.no_grad():
        t_tr, t_va = teacher(x_tr), teacher(x_va)
    cw = None if data.class_weights is None else torch.as_tensor(data.class_weights).float()
    kw = {"task": task, "temperature": temperature, "alpha": alpha, "class_weights": cw}
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)

    def val_loss() -> float:
        student.eval()
        with torch.no_grad():
            return float(_loss(student(x_va), t_va, y_va, **kw))  # type: ignore[arg-type]

    best, best_state = val_loss(), copy.deepcopy(student.state_dict())
    for _ in range(epochs):
        student.train()
        for idx in torch.randperm(len(x_tr), generator=gen).split(batch_size):
            loss = _loss(student(x_tr[idx]), t_tr[idx], y_tr[idx], **kw)  # type: ignore[arg-type]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        current = val_loss()
        if current < best:
            best, best_state = current, copy.deepcopy(student.state_dict())
    student.load_state_dict(best_state)
    return student.eval()
