"""Training throughput: our trainer against a bare torch loop on the same model and data.

Our trainer does more per epoch than the bare loop (validation loss, best-weights copy, an
atomic checkpoint with every RNG state, batches drawn from its own saved generator); the
ratio says what that costs. Target: >= 0.9. On a CUDA machine it also compares bf16 with fp32.

    python benchmarks/bench_train.py [--rows 20000] [--epochs 10] [--repeats 5]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from mlops.params import PrepareParams, TrainParams
from pipelines.model import MLP
from pipelines.prepare import PreparedData, prepare
from pipelines.sources import AI4I_SPEC, generate_ai4i
from pipelines.train import class_weights, lr_factor, model_config, split_tensors, train_model

RESULTS = Path(__file__).parent / "results" / "train.md"


def bare_loop(data: PreparedData, params: TrainParams, device: torch.device, amp: bool) -> float:
    """The least a training loop can do: shuffle, forward, backward, step. Returns seconds.

    Like train_model it starts from the prepared frames, so both pay for building tensors.
    """
    start = time.perf_counter()
    x, y = split_tensors(data, "train")
    x, y = x.to(device), y.to(device)
    torch.manual_seed(params.seed)
    model = MLP(model_config(data, params)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    steps = math.ceil(len(x) / params.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, warmup_steps=steps, total_steps=params.epochs * steps)
    )
    loss_fn = nn.CrossEntropyLoss(
        weight=class_weights(y.cpu(), len(data.preprocessor.classes)).to(device)
    )
    model.train()
    for _ in range(params.epochs):
        perm = torch.randperm(len(x), device=device)
        for i in range(0, len(x), params.batch_size):
            idx = perm[i : i + params.batch_size]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out = model(x[idx])
            loss = loss_fn(out.float(), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def ours(data: PreparedData, params: TrainParams) -> float:
    with tempfile.TemporaryDirectory() as ckpt:
        start = time.perf_counter()
        train_model(data, params, checkpoint_dir=Path(ckpt), progress=False)
        return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    data = prepare({"bench": generate_ai4i(args.rows, 1)}, AI4I_SPEC, PrepareParams())
    n = len(data.train)
    # patience > epochs: both loops run every epoch
    base = TrainParams(epochs=args.epochs, patience=args.epochs + 1, device="cpu")
    configs: list[tuple[str, TrainParams, torch.device, bool]] = [
        ("cpu fp32, 1 thread", base, torch.device("cpu"), False)
    ]
    if torch.cuda.is_available():
        cuda = base.model_copy(update={"device": "cuda"})
        configs += [
            ("cuda fp32", cuda.model_copy(update={"amp": False}), torch.device("cuda"), False),
            ("cuda bf16 autocast", cuda, torch.device("cuda"), True),
        ]

    rows = []
    bar = tqdm(total=len(configs) * args.repeats * 2, desc="bench", unit="run")
    for name, params, device, amp in configs:
        ours_s, bare_s = [], []
        # Back to back in pairs, the median of the pairs' ratios: on a shared machine the load
        # drifts, and a pair sees nearly the same load.
        for _ in range(args.repeats):
            threads = torch.get_num_threads()
            if device.type == "cpu":
                torch.set_num_threads(params.cpu_threads)  # as train_model does
            bare_s.append(bare_loop(data, params, device, amp))
            torch.set_num_threads(threads)
            bar.update(1)
            ours_s.append(ours(data, params))
            bar.update(1)
        samples = n * params.epochs
        ratio = statistics.median(b / o for b, o in zip(bare_s, ours_s, strict=True))
        ours_tp, bare_tp = samples / statistics.median(ours_s), samples / statistics.median(bare_s)
        rows.append((name, ours_tp, bare_tp, ratio))
        bar.set_postfix(last=f"{name}: {ratio:.2f}")
    bar.close()

    lines = [
        "# Training throughput",
        "",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {platform.node()}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads available, torch {torch.__version__}, "
        f"load average {os.getloadavg()[0]:.1f} (shared machine: figures are noisy)",
        f"- data: ai4i {args.rows} rows ({n} train), MLP {list(base.hidden)}, batch "
        f"{base.batch_size}, {args.epochs} epochs; medians of {args.repeats} back-to-back pairs",
        "- ours = `train_model` with validation every epoch and a checkpoint every epoch; "
        "bare = shuffle/forward/backward/step only, same model, optimizer, schedule and loss",
        "",
        "| config | ours (samples/s) | bare loop (samples/s) | ratio ours/bare |",
        "|---|---|---|---|",
        *[f"| {c} | {o:,.0f} | {b:,.0f} | {r:.2f} |" for c, o, b, r in rows],
        "",
    ]
    if not torch.cuda.is_available():
        lines.append("No GPU on this machine: CUDA rows (bf16 autocast vs fp32) not measured.")
        lines.append("")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
