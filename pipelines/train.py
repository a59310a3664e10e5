"""Train: a tabular MLP on the prepared splits, with checkpoints that resume bit for bit.

The loop reads top to bottom: choose the device once, build tensors, model, optimizer and the
warmup + cosine schedule, then per epoch: train, measure val loss, keep the best weights, write
a checkpoint, stop early when val loss has not improved for `patience` epochs.

A checkpoint holds everything the next epoch depends on (weights, optimizer and scheduler
state, best weights, early-stopping counter, every RNG including the data loader's), so a run
killed at any point and resumed reaches the same final weights as one never interrupted.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mlops.errors import MlopsError
from mlops.io import atomic_write_json, atomic_write_text
from mlops.params import TrainParams
from pipelines.model import MLP, ModelConfig, model_schema, save_model
from pipelines.prepare import PreparedData

CHECKPOINT_FORMAT = 1
# Cosine decay ends at this share of the peak rate rather than 0: the last epochs still learn.
MIN_LR_FACTOR = 0.05


@dataclass
class TrainResult:
    model: MLP  # best weights, on the CPU, in eval mode
    config: ModelConfig
    history: list[dict[str, float]]
    best_epoch: int
    best_val_loss: float
    device: str
    duration_s: float
    resumed_from_epoch: int = 0  # epochs already done when this call started


def resolve_device(requested: str) -> torch.device:
    """`auto` takes CUDA when there is one; asking for CUDA without one is an error."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise MlopsError(
            "train.device is 'cuda' but no CUDA device is available here (use cpu or auto)"
        )
    if requested in ("cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    if requested not in ("auto", "cpu", "cuda"):
        raise MlopsError(f"unknown device {requested!r} (auto, cpu or cuda)")
    return torch.device("cpu")


def lr_factor(step: int, *, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup to the peak rate, then cosine decay to MIN_LR_FACTOR of it."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return MIN_LR_FACTOR + (1 - MIN_LR_FACTOR) * 0.5 * (1 + math.cos(math.pi * progress))


def class_weights(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """`balanced` weights n / (k * count): a 3 % failure class counts as much as the rest."""
    counts = torch.bincount(y, minlength=n_classes).double()
    weights = len(y) / (n_classes * counts.clamp(min=1))
    return weights.float()


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Index batches of one epoch, in an order drawn from `generator` alone."""
    return list(torch.randperm(n, generator=generator).split(batch_size))


def split_tensors(data: PreparedData, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    frame = data.split(split)
    pre = data.preprocessor
    x = torch.from_numpy(pre.transform(frame))
    y = torch.from_numpy(pre.encode_target(frame[pre.target]))
    return x, y


def model_config(data: PreparedData, params: TrainParams) -> ModelConfig:
    pre = data.preprocessor
    return ModelConfig(
        task=pre.task,
        n_inputs=pre.n_features,
        hidden=tuple(params.hidden),
        n_outputs=len(pre.classes) if pre.task == "classification" else 1,
        dropout=params.dropout,
    )


def run_fingerprint(
    params: TrainParams, config: ModelConfig, device: torch.device, tensors: list[torch.Tensor]
) -> str:
    """What a checkpoint must match to be resumed: parameters, architecture, device and data."""
    # Not the search list: it says how the parameters were chosen, not what this run trains.
    chosen = params.model_dump(exclude={"search"})
    h = hashlib.sha256(json.dumps([chosen, config.to_dict(), device.type]).encode())
    for t in tensors:
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state(loader_gen: torch.Generator) -> dict[str, Any]:
    # Plain tensors, ints and lists only, so the checkpoint loads with weights_only=True.
    _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "loader": loader_gen.get_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": version, "state": list(py_state), "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], loader_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    loader_gen.set_state(state["loader"])
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, npy["pos"], npy["has_gauss"], npy["cached"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """Write to a temporary file and rename: a kill mid-write leaves the previous checkpoint.

    No fsync: it cost ~5 ms an epoch here, and it guards only against power loss, after which
    an unreadable checkpoint is ignored and training restarts; slower, never wrong.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint at `path` if it belongs to this very run, else None (start afresh)."""
    if not path.is_file():
        return None
    try:
        # weights_only: a checkpoint is data; unpickling arbitrary objects would run code.
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        warnings.warn(f"ignoring unreadable checkpoint {path}: {exc}", stacklevel=2)
        return None
    if ckpt.get("format") != CHECKPOINT_FORMAT or ckpt.get("fingerprint") != fingerprint:
        return None
    return dict(ckpt)


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


@torch.no_grad()
def _val_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: nn.Module,
    device: torch.device,
    amp: bool,
) -> float:
    model.eval()
    outputs = []
    for start in range(0, len(x), 65_536):
        xb = x[start : start + 65_536].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            outputs.append(model(xb).float())
    out = torch.cat(outputs)
    if not y.is_floating_point():  # class ids: logits go to the loss as they are
        return float(loss_fn(out, y.to(device)))
    return float(loss_fn(out.squeeze(-1), y.to(device)))


def train_model(
    data: PreparedData,
    params: TrainParams,
    *,
    checkpoint_dir: Path | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train on `data.train`, early-stop on `data.val`; resume from `checkpoint_dir` if it holds
    a checkpoint of this same run (same data, parameters and device).

    Always one process: `params.nproc` is for the stage, which starts `pipelines.ddp` ranks."""
    started = time.perf_counter()
    device = resolve_device(params.device)
    cuda = device.type == "cuda"
    amp = cuda and params.amp  # bf16 autocast: tensor-core speed, no loss scaling needed
    previous_threads, previous_det = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
    )
    if not cuda and params.cpu_threads:
        torch.set_num_threads(params.cpu_threads)
    # On CUDA some kernels have no deterministic version: warn there rather than fail.
    torch.use_deterministic_algorithms(True, warn_only=cuda)

    x_train, y_train = split_tensors(data, "train")
    x_val, y_val = split_tensors(data, "val")
    config = model_config(data, params)
    classification = config.task == "classification"
    fingerprint = run_fingerprint(params, config, device, [x_train, y_train, x_val, y_val])

    _seed_everything(params.seed)
    model = MLP(config).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=params.lr, weight_decay=params.weight_decay
    )
    steps_per_epoch = math.ceil(len(x_train) / params.batch_size)
    warmup, total = params.warmup_epochs * steps_per_epoch, params.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup_steps=warmup, total_steps=total)
    )
    if classification:
        weights = class_weights(y_train, config.n_outputs) if params.class_weighting else None
        loss_fn: nn.Module = nn.CrossEntropyLoss(
            weight=weights.to(device) if weights is not None else None
        )
    else:
        loss_fn = nn.MSELoss()  # on the standardised target, so the loss scale is data-independent

    # The table fits in memory: a batch is one tensor index into it, not a DataLoader's per-row
    # fetch and collate (which cost ~15 % of an epoch here). The loader's own generator alone
    # decides the order, so its state in the checkpoint replays the same batches.
    loader_gen = torch.Generator().manual_seed(params.seed)
    if cuda:  # page-locked host memory: the copies below can overlap with compute
        x_train, y_train = x_train.pin_memory(), y_train.pin_memory()

    ckpt_path = checkpoint_dir / f"train-{fingerprint[:16]}.pt" if checkpoint_dir else None
    history: list[dict[str, float]] = []
    best_val, best_epoch, bad_epochs, start_epoch = math.inf, -1, 0, 0
    best_state = _cpu_state(model)
    ckpt = load_checkpoint(ckpt_path, fingerprint) if ckpt_path else None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        best_state, best_val, best_epoch = (
            ckpt["best_model"],
            ckpt["best_val_loss"],
            ckpt["best_epoch"],
        )
        bad_epochs, start_epoch, history = ckpt["bad_epochs"], ckpt["epoch"], list(ckpt["history"])
        _set_rng_state(ckpt["rng"], loader_gen)

    bar = tqdm(
        total=params.epochs,
        initial=start_epoch,
        desc="train",
        unit="epoch",
        disable=not progress,
        dynamic_ncols=True,
    )
    try:
        for epoch in range(start_epoch, params.epochs):
            if bad_epochs >= params.patience:
                break
            t0 = time.perf_counter()
            model.train()
            loss_sum = torch.zeros((), device=device)
            for idx in shuffled_batches(len(x_train), params.batch_size, loader_gen):
                xb = x_train[idx].to(device, non_blocking=True)
                yb = y_train[idx].to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    out = model(xb)
                out = out.float() if classification else out.float().squeeze(-1)
                loss = loss_fn(out, yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                # Summed on the device: .item() per step would wait for the GPU every step.
                loss_sum += loss.detach() * len(xb)
            train_loss = float(loss_sum) / len(x_train)
            val_loss = _val_loss(model, x_val, y_val, loss_fn, device, amp)

            if val_loss < best_val:
                best_val, best_epoch, bad_epochs = val_loss, epoch, 0
                best_state = _cpu_state(model)
            else:
                bad_epochs += 1
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "val_loss": val_loss,
                    "lr": float(scheduler.get_last_lr()[0]),
                    "seconds": time.perf_counter() - t0,
                }
            )
            if ckpt_path is not None:
                save_checkpoint(
                    ckpt_path,
                    {
                        "format": CHECKPOINT_FORMAT,
                        "fingerprint": fingerprint,
                        "epoch": epoch + 1,
                        "model": _cpu_state(model),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "best_model": best_state,
                        "best_val_loss": best_val,
                        "best_epoch": best_epoch,
                        "bad_epochs": bad_epochs,
                        "history": history,
                        "rng": _rng_state(loader_gen),
                        "config": config.to_dict(),
                        "params": params.model_dump(),
                    },
                )
            bar.update(1)
            bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}", best=best_epoch)
    finally:
        bar.close()
        torch.use_deterministic_algorithms(previous_det)
        torch.set_num_threads(previous_threads)

    model.load_state_dict(best_state)
    model = model.cpu().eval()
    if ckpt_path is not None:
        # Finished: the model is the result now; a checkpoint only serves an interrupted run.
        ckpt_path.unlink(missing_ok=True)
    return TrainResult(
        model=model,
        config=config,
        history=history,
        best_epoch=best_epoch,
        best_val_loss=best_val,
        device=str(device),
        duration_s=time.perf_counter() - started,
        resumed_from_epoch=start_epoch,
    )


def plot_history(history: list[dict[str, float]], png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in DVC stages
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    ax.plot(epochs, [h["val_loss"] for h in history], label="val loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path)
    plt.close(fig)


def run_train_stage(
    data: PreparedData,
    params: TrainParams,
    *,
    model_dir: Path,
    curve_csv: Path,
    curve_png: Path,
    info_path: Path,
    checkpoint_dir: Path | None,
    progress: bool = True,
) -> TrainResult:
    """The DVC stage: train, then write the model directory, the curves and the run facts.

    One process; `train.nproc` > 1 goes through `pipelines.ddp.launch` instead, whose rank 0
    writes the same files with `write_train_outputs`.
    """
    result = train_model(data, params, checkpoint_dir=checkpoint_dir, progress=progress)
    write_train_outputs(
        result,
        data,
        model_dir=model_dir,
        curve_csv=curve_csv,
        curve_png=curve_png,
        info_path=info_path,
    )
    return result


def write_train_outputs(
    result: TrainResult,
    data: PreparedData,
    *,
    model_dir: Path,
    curve_csv: Path,
    curve_png: Path,
    info_path: Path,
    extra_info: dict[str, Any] | None = None,
) -> None:
    """The train stage's files: model directory, loss curves (CSV and PNG), run facts."""
    save_model(
        model_dir,
        config=result.config,
        preprocessor=data.preprocessor,
        spec=data.spec,
        model=result.model,
        schema=model_schema(data.train, data.spec, data.preprocessor),
        extra={"best_epoch": result.best_epoch},
    )
    lines = ["epoch,train_loss,val_loss,lr"]
    lines += [
        f"{h['epoch']:.0f},{h['train_loss']:.6f},{h['val_loss']:.6f},{h['lr']:.6g}"
        for h in result.history
    ]
    atomic_write_text(curve_csv, "\n".join(lines) + "\n")
    plot_history(result.history, curve_png)
    # Device and duration differ between identical runs: they live here, not in the model.
    atomic_write_json(
        info_path,
        {
            "device": result.device,
            "duration_s": round(result.duration_s, 3),
            "best_epoch": result.best_epoch,
            "best_val_loss": result.best_val_loss,
            "epochs_run": len(result.history),
            "resumed_from_epoch": result.resumed_from_epoch,
            **(extra_info or {}),
        },
    )
