"""Model versions are portable: stored relative to MLOPS_HOME, verified by their checksums."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from mlops.settings import get_workspace
from mlops.store import Store
from pipelines.artifact import load_predictor
from pipelines.gate import model_dir

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAST_TRAIN = ["--set", "train.epochs=3", "--set", "train.device=cpu"]
FAST_COMPRESS = [
    "--set", "compress.latency_repeats=20", "--set", "compress.distill_epochs=3",
    "--set", "compress.finetune_epochs=1",
]  # fmt: skip


def test_moving_mlops_home_keeps_every_version_loadable_and_verify_catches_a_flipped_byte(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mlops_cli,  # type: ignore[no-untyped-def]
) -> None:
    old_home, new_home, root = tmp_path / "home-a", tmp_path / "home-b", tmp_path / "ws"
    monkeypatch.setenv("MLOPS_HOME", str(old_home))
    assert mlops_cli("init", root).exit_code == 0
    assert mlops_cli("-w", root, "ingest", "--rows", "3000", "--seed", "4").exit_code == 0
    assert mlops_cli("-w", root, "validate").exit_code == 0
    trained = mlops_cli("-w", root, "train", *FAST_TRAIN)
    assert trained.exit_code == 0, trained.stderr
    with Store.open(get_workspace(root).database_url) as store:
        parent = store.list_models()[0]
    compressed = mlops_cli("-w", root, "compress", parent.ref, *FAST_COMPRESS)
    assert compressed.exit_code in (0, 3), compressed.stderr
    with Store.open(get_workspace(root).database_url) as store:
        versions = store.list_models()
    assert versions and all(not Path(m.path).is_absolute() for m in versions)

    shutil.move(old_home, new_home)  # the one variable meant to relocate all state
    monkeypatch.setenv("MLOPS_HOME", str(new_home))
    ws = get_workspace(root)
    verified = mlops_cli("-w", root, "models", "verify")
    assert verified.exit_code == 0, verified.stderr
    assert verified.stdout.count("ok ") == len(versions)
    for m in versions:
        folder = ws.version_dir(m.path)
        assert folder.is_relative_to(new_home)
        test = pd.read_parquet(folder / "prepared" / "test.parquet")
        assert len(load_predictor(model_dir(ws, m)).predict(test, strict=True)) == len(test)

    weights = model_dir(ws, versions[0]) / "weights.pt"
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 3] ^= 0x10
    weights.write_bytes(bytes(blob))
    refused = mlops_cli("-w", root, "models", "verify", versions[0].ref)
    err = refused.stderr.strip()
    assert refused.exit_code != 0 and len(err.splitlines()) == 1, err
    assert "weights.pt does not match its sha256 in the manifest (tampered or truncated)" in err
    shown = mlops_cli("-w", root, "models", "verify")  # every version: names the bad one
    assert shown.exit_code != 0 and versions[0].ref in shown.stderr
