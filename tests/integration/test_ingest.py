"""Ingestion end to end: workspace, DVC versioning, the store and the CLI, on real DVC and git."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from mlops.settings import Workspace
from mlops.store import Store


def _data_files(ws: Workspace) -> list[str]:
    return sorted(
        p.relative_to(ws.root).as_posix()
        for p in ws.data_dir.rglob("*")
        if p.is_file() and p.name not in (".gitkeep", ".gitignore")
    )


def _batches(ws: Workspace) -> list[str]:
    store = Store.open(ws.database_url)
    try:
        return [b.id for b in store.list_batches()]
    finally:
        store.close()


def test_init_creates_a_workspace(tmp_path: Path, mlops_cli) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "proj"
    result = mlops_cli("init", root)
    assert result.exit_code == 0, result.stderr
    for part in ("params.yaml", ".dvc/config", ".git", "data/raw", "data/quarantine", ".mlops"):
        assert (root / part).exists(), part
    # Machine state never reaches git; the remote lives under MLOPS_HOME, in DVC's local config.
    assert ".mlops/" in (root / ".gitignore").read_text().splitlines()
    assert str(root / ".mlops" / "dvc-remote") in (root / ".dvc" / "config.local").read_text()
    # Running init again completes rather than clobbers.
    (root / "params.yaml").write_text((root / "params.yaml").read_text() + "# mine\n")
    assert mlops_cli("init", root).exit_code == 0
    assert (root / "params.yaml").read_text().endswith("# mine\n")


def test_mlops_home_relocates_all_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlops_cli
) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "elsewhere"
    monkeypatch.setenv("MLOPS_HOME", str(home))
    root = tmp_path / "proj"
    assert mlops_cli("init", root).exit_code == 0
    assert mlops_cli("-w", root, "ingest", "--rows", "300", "--seed", "2").exit_code == 0
    assert (home / "mlops.db").is_file() and any((home / "dvc-remote").rglob("*"))
    assert not (root / ".mlops").exists()


def test_ingest_twice_is_one_batch_dvc_clean_and_checkout_restores(
    tmp_path: Path,
    mlops_cli,  # type: ignore[no-untyped-def]
) -> None:
    root = tmp_path / "w"
    assert mlops_cli("init", root).exit_code == 0
    args = ("-w", root, "ingest", "--source", "ai4i", "--rows", "5000", "--seed", "3", "--json")
    first = mlops_cli(*args)
    second = mlops_cli(*args)
    assert first.exit_code == 0 and second.exit_code == 0, first.stderr + second.stderr
    one, two = json.loads(first.stdout), json.loads(second.stdout)
    assert (one["created"], two["created"]) == (True, False)
    assert one["id"] == two["id"] and one["rows"] == 5000

    listed = json.loads(mlops_cli("-w", root, "data", "list", "--json").stdout)
    assert [b["id"] for b in listed] == [one["id"]]
    assert listed[0]["dvc_md5"] == one["dvc_md5"]

    status = subprocess.run(["dvc", "status"], cwd=root, capture_output=True, text=True)
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout
    cloud = subprocess.run(["dvc", "status", "-c"], cwd=root, capture_output=True, text=True)
    assert "in sync" in cloud.stdout, cloud.stdout  # pushed to the remote

    path = root / listed[0]["path"]
    original = path.read_bytes()
    path.unlink()
    restored = mlops_cli("-w", root, "data", "checkout", one["id"])
    assert restored.exit_code == 0, restored.stderr
    assert path.read_bytes() == original


def test_checkout_fetches_from_the_remote_when_the_cache_is_gone(ws: Workspace, mlops_cli) -> None:  # type: ignore[no-untyped-def]
    out = mlops_cli("-w", ws.root, "ingest", "--rows", "400", "--seed", "5", "--json")
    batch = json.loads(out.stdout)
    path = ws.root / batch["path"]
    original = path.read_bytes()
    path.unlink()
    subprocess.run(["rm", "-rf", str(ws.root / ".dvc" / "cache")], check=True)
    assert mlops_cli("-w", ws.root, "data", "checkout", batch["id"]).exit_code == 0
    assert path.read_bytes() == original


def test_two_processes_ingesting_at_once_both_succeed(ws: Workspace) -> None:
    env = {**os.environ, "MLOPS_WORKSPACE": str(ws.root)}
    procs = [
        subprocess.Popen(
            ["mlops", "ingest", "--rows", "800", "--seed", str(seed)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (11, 12)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert len(_batches(ws)) == 2
    status = subprocess.run(["dvc", "status"], cwd=ws.root, capture_output=True, text=True)
    assert "up to date" in status.stdout


def _write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


GOOD_CSV = b"a,b,label\n1,2.5,x\n2,3.5,y\n3,1.0,x\n4,0.5,y\n"


@pytest.mark.parametrize(
    ("files", "args", "message"),
    [
        ({}, ["--source", "csv:inputs/missing.csv", "--target", "label"], "file not found"),
        (
            {"inputs/garbled.csv": b'a,b\n1,2\n"3,4,5\n\x00\x01\x02\xff\xfe\n1,2,3,4,5,6\n'},
            ["--source", "csv:inputs/garbled.csv", "--target", "a"],
            "garbled.csv",
        ),
        ({"inputs/empty.csv": b""}, ["--source", "csv:inputs/empty.csv", "--target", "a"], "empty"),
        (
            {"inputs/good.csv": GOOD_CSV},
            ["--source", "csv:inputs/good.csv", "--target", "nope"],
            "no column 'nope'",
        ),
        (
            {"inputs/one.csv": b"a,label\n1,x\n2,x\n3,x\n"},
            ["--source", "csv:inputs/one.csv", "--target", "label"],
            "single class",
        ),
        (
            {"inputs/good.csv": GOOD_CSV},
            ["--source", "csv:inputs/good.csv", "--target", "label", "--dataset", "../x"],
            "invalid data set name '../x'",
        ),
        (
            {"inputs/good.csv": GOOD_CSV},
            ["--source", "csv:inputs/good.csv", "--target", "label", "--positive-class", "z"],
            "--positive-class 'z' is not a label",
        ),
        ({}, ["--source", "kaggle:titanic"], "unknown source 'kaggle:titanic'"),
        ({}, ["--source", "ai4i", "--rows", "0"], "--rows must be a positive"),
        ({}, ["--source", "ai4i", "--rows", "-5"], "--rows must be a positive"),
        (
            {"inputs/good.csv": GOOD_CSV},
            ["--source", "parquet:inputs/good.csv", "--target", "label"],
            "good.csv",
        ),
    ],
    ids=[
        "missing-file",
        "garbled-csv",
        "empty-file",
        "missing-target",
        "single-class",
        "dataset-name-escapes",
        "unknown-positive-class",
        "unknown-source",
        "rows-zero",
        "rows-negative",
        "unreadable-parquet",
    ],
)
def test_bad_input_is_one_line_nonzero_and_writes_nothing(
    ws: Workspace,
    mlops_cli,
    monkeypatch: pytest.MonkeyPatch,
    files: dict[str, bytes],
    args: list[str],
    message: str,  # type: ignore[no-untyped-def]
) -> None:
    monkeypatch.chdir(ws.root)  # source paths are relative to the current directory
    for rel, content in files.items():
        _write(ws.root / rel, content)
    result = mlops_cli("-w", ws.root, "ingest", *args)
    assert result.exit_code != 0
    err = result.stderr.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    assert message.lower() in err.lower(), err
    assert _data_files(ws) == [] and _batches(ws) == []


def test_user_csv_is_ingested_with_inferred_task(
    ws: Workspace, mlops_cli, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    _write(ws.root / "inputs" / "good.csv", GOOD_CSV)
    monkeypatch.chdir(ws.root / "inputs")  # relative to the current directory, not -w
    out = mlops_cli("-w", ws.root, "ingest", "--source", "csv:good.csv", "--target", "label")
    assert out.exit_code == 0, out.stderr
    assert "classification" in out.stdout  # the inference is printed
    store = Store.open(ws.database_url)
    spec = store.get_dataset_spec("good")
    store.close()
    assert spec["target"] == "label" and spec["task"] == "classification"


def test_not_a_workspace_is_a_clear_error(tmp_path: Path, mlops_cli) -> None:  # type: ignore[no-untyped-def]
    result = mlops_cli("-w", tmp_path, "data", "list")
    assert result.exit_code != 0 and "not an mlops workspace" in result.stderr


def test_error_messages_keep_brackets(ws: Workspace, mlops_cli) -> None:  # type: ignore[no-untyped-def]
    """Column names like "Torque [Nm]" must not be eaten as console markup."""
    good = _write(ws.root / "inputs" / "good.csv", GOOD_CSV)
    out = mlops_cli("-w", ws.root, "ingest", "--source", f"csv:{good}", "--target", "[x]")
    assert out.exit_code != 0 and "'[x]'" in out.stderr, out.stderr


def test_rows_without_a_label_are_announced_kept_and_left_out_of_training(
    ws: Workspace, mlops_cli, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    import numpy as np
    import pandas as pd

    from mlops.params import Params
    from pipelines.prepare import prepare
    from pipelines.sources import DatasetSpec

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=300), "b": rng.normal(size=300)})
    frame["label"] = (frame["a"] > 0).astype(int)
    frame.loc[::10, "label"] = None  # 30 rows nobody labelled yet
    path = ws.root.parent / "exports" / "labels.csv"  # outside the workspace, as users keep it
    path.parent.mkdir()
    frame.to_csv(path, index=False)
    out = mlops_cli("-w", ws.root, "ingest", "--source", f"csv:{path}", "--target", "label")
    assert out.exit_code == 0, out.stderr
    said = " ".join(out.stdout.split())
    assert "30 of 300 rows have no label in 'label': kept in the batch for labelling later" in said
    with Store.open(ws.database_url) as store:
        (batch,) = store.list_batches()
        spec = DatasetSpec.from_dict(store.get_dataset_spec(batch.dataset))
    assert batch.rows == 300 and batch.meta["unlabelled"] == 30  # nothing dropped from the batch
    kept = pd.read_parquet(ws.resolve(batch.path))
    assert len(kept) == 300 and int(kept["label"].isna().sum()) == 30
    # Training and evaluation see the 270 labelled rows only.
    data = prepare({batch.id: kept}, spec, Params().prepare)
    assert sum(len(f) for f in (data.train, data.val, data.test)) == 270
