"""Distributed training: `train.nproc` processes train one model with torch DDP.

`launch` (what `mlops stage train` calls) starts `python -m torch.distributed.run --standalone`
(a free port, one node) with `nproc` copies of this module; the same module runs under a
cluster's own `torchrun --nnodes ...`. Each copy (`main`) joins the process group (gloo on CPU,
NCCL with one GPU per rank), trains its share of every batch (`train_distributed`), and rank 0
writes the very files the single-process stage writes, so evaluate, gate, compress and serve
see the same kind of model folder.

Sharding is DistributedSampler's, kept aligned with the single-process loop: every rank draws
the same shuffled global batches of `train.batch_size` rows from the same seed and takes every
N-th row of each (rank r: rows r, r+N, ...). Each rank divides its rows' summed loss by the
whole batch's weight (every rank holds the full table, so no message is needed) and multiplies
by N: DDP's average of the ranks' gradients is then the single-process batch gradient, up to
float summation order. Dropout is the one other difference: each rank draws its own masks.

Rank 0 alone measures the val loss, keeps the best weights and decides early stopping; it
broadcasts the decision so every rank leaves the loop after the same epoch. No checkpoints: a
killed distributed run starts over (resuming bit for bit would need every rank's RNG state).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from mlops.errors import MlopsError
from mlops.params import TrainParams
from pipelines.model import MLP
from pipelines.prepare import PreparedData, load_prepared
from pipelines.train import (
    TrainResult,
    _cpu_state,
    _seed_everything,
    _val_loss,
    class_weights,
    lr_factor,
    model_config,
    resolve_device,
    shuffled_batches,
    split_tensors,
    write_train_outputs,
)


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def train_distributed(
    data: PreparedData, params: TrainParams, *, progress: bool = True
) -> TrainResult | None:
    """One rank's part of a DDP run (the process group is up): rank 0 gets the result (best
    weights by val loss, on the CPU), the other ranks None."""
    started = time.perf_counter()
    rank, world = dist.get_rank(), dist.get_world_size()
    device = resolve_device(params.device)
    cuda = device.type == "cuda"
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    amp = cuda and params.amp
    if not cuda and params.cpu_threads:
        torch.set_num_threads(params.cpu_threads)
    # This process exists for this run alone: nothing to restore afterwards.
    torch.use_deterministic_algorithms(True, warn_only=cuda)

    # Every rank holds the whole table: a tabular train split fits in memory, and the weight
    # of a whole batch (the loss's denominator) is then known everywhere without a message.
    x_train, y_train = split_tensors(data, "train")
    config = model_config(data, params)
    classification = config.task == "classification"

    _seed_everything(params.seed)  # the same initial weights on every rank, as DDP requires
    module = MLP(config).to(device)
    model = DistributedDataParallel(module, device_ids=[device.index] if cuda else None)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=params.lr, weight_decay=params.weight_decay
    )
    steps_per_epoch = math.ceil(len(x_train) / params.batch_size)
    warmup, total = params.warmup_epochs * steps_per_epoch, params.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup_steps=warmup, total_steps=total)
    )
    weights = (
        class_weights(y_train, config.n_outputs)
        if classification and params.class_weighting
        else None
    )
    on_device = weights.to(device) if weights is not None else None
    # Summed per rank; the mean (what early stopping reads) on rank 0's whole val split.
    sum_loss: nn.Module = (
        nn.CrossEntropyLoss(weight=on_device, reduction="sum")
        if classification
        else nn.MSELoss(reduction="sum")
    )
    mean_loss: nn.Module = nn.CrossEntropyLoss(weight=on_device) if classification else nn.MSELoss()

    loader_gen = torch.Generator().manual_seed(params.seed)  # the same batches on every rank
    if rank:  # dropout: the same masks on every rank would drop the same units for row r, r+N
        torch.manual_seed(params.seed + rank)
    if cuda:
        x_train, y_train = x_train.pin_memory(), y_train.pin_memory()
    x_val, y_val = split_tensors(data, "val")

    history: list[dict[str, float]] = []
    best_val, best_epoch, bad_epochs = math.inf, -1, 0
    best_state = _cpu_state(module)
    bar = tqdm(
        total=params.epochs,
        desc=f"train x{world}",
        unit="epoch",
        disable=not progress or rank != 0,
        dynamic_ncols=True,
    )
    try:
        for epoch in range(params.epochs):
            t0 = time.perf_counter()
            model.train()
            loss_sum = torch.zeros((), device=device)
            for idx in shuffled_batches(len(x_train), params.batch_size, loader_gen):
                mine = idx[rank::world]  # may be empty in a last, short batch: still all-reduces
                xb = x_train[mine].to(device, non_blocking=True)
                yb = y_train[mine].to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    out = model(xb)
                out = out.float() if classification else out.float().squeeze(-1)
                batch_weight = (
                    float(weights[y_train[idx]].sum()) if weights is not None else len(idx)
                )
                loss = sum_loss(out, yb) * (world / batch_weight)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # DDP averages the ranks' gradients here
                optimizer.step()
                scheduler.step()
                loss_sum += loss.detach() * (len(idx) / world)
            dist.all_reduce(loss_sum)
            stop = torch.zeros(1, device=device)
            if rank == 0:
                train_loss = float(loss_sum) / len(x_train)
                val_loss = _val_loss(module, x_val, y_val, mean_loss, device, amp)
                if val_loss < best_val:
                    best_val, best_epoch, bad_epochs = val_loss, epoch, 0
                    best_state = _cpu_state(module)
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
                stop[0] = bad_epochs >= params.patience
                bar.update(1)
                bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}", best=best_epoch)
            dist.broadcast(stop, src=0)
            if stop.item():
                break
    finally:
        bar.close()

    if rank != 0:
        return None
    module.load_state_dict(best_state)
    return TrainResult(
        model=module.cpu().eval(),
        config=config,
        history=history,
        best_epoch=best_epoch,
        best_val_loss=best_val,
        device=device.type,
        duration_s=time.perf_counter() - started,
    )


# -- the launcher (the stage's process) -------------------------------------------------------


def launch(
    prepared_dir: Path,
    params: TrainParams,
    *,
    model_dir: Path,
    curve_csv: Path,
    curve_png: Path,
    info_path: Path,
    progress: bool = True,
) -> dict[str, Any]:
    """Train with `params.nproc` processes on this machine; returns the run facts rank 0 wrote
    to `info_path` beside the model folder and curves (the files `run_train_stage` writes)."""
    device = resolve_device(params.device)
    if device.type == "cuda" and params.nproc > torch.cuda.device_count():
        raise MlopsError(
            f"train.nproc is {params.nproc} but this machine has {torch.cuda.device_count()} "
            "CUDA device(s): NCCL needs one per process (or set train.device=cpu for gloo)"
        )
    env = dict(os.environ)
    # torch.distributed.run would set 1 and print a banner; train.cpu_threads decides anyway.
    env.setdefault("OMP_NUM_THREADS", str(params.cpu_threads or 1))
    with tempfile.TemporaryDirectory(prefix="mlops-ddp-") as errors:
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={params.nproc}",
            "-m", "pipelines.ddp",
            "--prepared", str(prepared_dir),
            "--params", params.model_dump_json(),
            "--model-dir", str(model_dir),
            "--curve-csv", str(curve_csv),
            "--curve-png", str(curve_png),
            "--info", str(info_path),
            "--error-dir", errors,
            *([] if progress else ["--no-progress"]),
        ]  # fmt: skip
        code = subprocess.run(cmd, env=env, check=False).returncode
        if code != 0:
            said = sorted(Path(errors).glob("rank*.txt"))
            if said:
                raise MlopsError(said[0].read_text())
            raise MlopsError(
                f"distributed training failed (torch.distributed.run exit code {code}); "
                "the failing rank's traceback is above"
            )
    info: dict[str, Any] = json.loads(info_path.read_text())
    return info


# -- one rank (python -m pipelines.ddp, under torch.distributed.run) ---------------------------


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="One rank of a DDP training run (started by launch).")
    p.add_argument("--prepared", type=Path, required=True, help="the prepare stage's folder")
    p.add_argument("--params", required=True, help="the train section as JSON")
    for name in ("--model-dir", "--curve-csv", "--curve-png", "--info"):
        p.add_argument(name, type=Path, required=True)
    p.add_argument("--error-dir", type=Path, help="each failing rank writes its error here")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    rank = int(os.environ.get("RANK", "0"))
    try:
        params = TrainParams.model_validate_json(args.params)
        device = resolve_device(params.device)
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend_for(device))
        try:
            data = load_prepared(args.prepared)
            result = train_distributed(data, params, progress=not args.no_progress)
            if result is not None:
                write_train_outputs(
                    result,
                    data,
                    model_dir=args.model_dir,
                    curve_csv=args.curve_csv,
                    curve_png=args.curve_png,
                    info_path=args.info,
                    extra_info={"nproc": dist.get_world_size(), "backend": backend_for(device)},
                )
        finally:
            dist.destroy_process_group()
    except MlopsError as exc:
        if args.error_dir is not None:
            (args.error_dir / f"rank{rank}.txt").write_text(str(exc))
        print(f"error: rank {rank}: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
