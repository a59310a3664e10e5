"""A training process killed with SIGKILL mid-epoch, then resumed, ends with the same weights."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EPOCHS = 4
# Small batches make an epoch last about a second here, so the kill lands inside one.
SCRIPT = f"""
import sys
from pathlib import Path
import torch
from mlops.params import PrepareParams, TrainParams
from pipelines.prepare import prepare
from pipelines.sources import AI4I_SPEC, generate_ai4i
from pipelines.train import train_model

out, ckpt = Path(sys.argv[1]), sys.argv[2]
data = prepare({{"b": generate_ai4i(6000, 3)}}, AI4I_SPEC, PrepareParams())
params = TrainParams(hidden=[32, 32], epochs={EPOCHS}, patience=50, batch_size=8, device="cpu")
result = train_model(data, params, checkpoint_dir=Path(ckpt) if ckpt else None, progress=False)
torch.save(result.model.state_dict(), out)
print("resumed_from", result.resumed_from_epoch)
"""


def _train(out: Path, ckpt: Path | str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(out), str(ckpt)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_killed_run_resumes_to_identical_weights(tmp_path: Path) -> None:
    ckpt_dir = tmp_path / "ckpt"
    straight = _train(tmp_path / "straight.pt", "")

    victim = _train(tmp_path / "never.pt", ckpt_dir)
    deadline = time.monotonic() + 300
    while not list(ckpt_dir.glob("*.pt")):
        assert victim.poll() is None, victim.communicate()[1]
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.02)
    time.sleep(0.3)  # into the next epoch, well before its end
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert not (tmp_path / "never.pt").exists()
    (ckpt,) = ckpt_dir.glob("*.pt")
    done = torch.load(ckpt, weights_only=True)["epoch"]
    assert 1 <= done < EPOCHS, "the kill must land mid-training"

    resumed = _train(tmp_path / "resumed.pt", ckpt_dir)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert f"resumed_from {done}" in out
    out, err = straight.communicate(timeout=600)
    assert straight.returncode == 0, err

    a = torch.load(tmp_path / "straight.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not list(ckpt_dir.glob("*.pt")), "the finished run removed its checkpoint"
