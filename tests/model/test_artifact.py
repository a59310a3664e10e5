"""The model folder as a contract: a self-describing manifest, checksums that refuse a changed
file, an ONNX model that runs without torch, and the strict transform serving uses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlops.errors import MlopsError
from mlops.params import PrepareParams, TrainParams
from pipelines import compress_methods as cm
from pipelines.artifact import InputError, load_predictor, verify_model
from pipelines.model import model_schema, save_model
from pipelines.prepare import PreparedData, prepare
from pipelines.sources import AI4I_SPEC, generate_ai4i
from pipelines.train import train_model


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[PreparedData, Path, Path]:
    """A small ai4i model saved twice: torch, and ONNX."""
    data = prepare({"b": generate_ai4i(2000, 3)}, AI4I_SPEC, PrepareParams())
    result = train_model(data, TrainParams(epochs=3, hidden=[16], device="cpu"), progress=False)
    root = tmp_path_factory.mktemp("models")
    common = {
        "config": result.config,
        "preprocessor": data.preprocessor,
        "spec": data.spec,
        "schema": model_schema(data.train, data.spec, data.preprocessor),
    }
    torch_dir = save_model(root / "torch", model=result.model, **common)  # type: ignore[arg-type]
    onnx = cm.export_onnx(result.model, result.config.n_inputs)
    onnx_dir = save_model(root / "onnx", onnx_bytes=onnx, **common)  # type: ignore[arg-type]
    return data, torch_dir, onnx_dir


def test_the_manifest_describes_inputs_outputs_runtime_and_every_file(
    saved: tuple[PreparedData, Path, Path],
) -> None:
    data, torch_dir, onnx_dir = saved
    manifest = json.loads((onnx_dir / "manifest.json").read_text())
    assert manifest["format"] == 2 and manifest["runtime"] == "onnx"
    inputs = {f["name"]: f for f in manifest["schema"]["input"]}
    assert list(inputs) == data.preprocessor.input_columns
    assert inputs["Type"]["dtype"] == "category" and inputs["Type"]["categories"] == ["H", "L", "M"]
    torque = inputs["Torque [Nm]"]
    assert torque["dtype"] == "number" and torque["nullable"] is False
    assert torque["range"] == [data.train["Torque [Nm]"].min(), data.train["Torque [Nm]"].max()]
    assert inputs["Rotational speed [rpm]"]["dtype"] == "integer"
    output = manifest["schema"]["output"]
    assert output == {
        "task": "classification",
        "target": "Machine failure",
        "classes": [0, 1],
        "positive_class": 1,
    }
    versions = manifest["versions"]
    assert versions["onnxruntime"] and versions["onnx_opset"] >= 13 and "torch" not in versions
    assert json.loads((torch_dir / "manifest.json").read_text())["versions"]["torch"]
    files = manifest["files"]
    assert set(files) == {"config.json", "preprocessor.json", "spec.json", "model.onnx"}
    assert all(len(h) == 64 for h in files.values())


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
@pytest.mark.parametrize("damage", ["flip-a-byte", "truncate", "delete"])
def test_a_changed_file_is_refused_by_loading_and_verify(
    saved: tuple[PreparedData, Path, Path], tmp_path: Path, runtime: str, damage: str
) -> None:
    import shutil

    _, torch_dir, onnx_dir = saved
    folder = shutil.copytree(torch_dir if runtime == "torch" else onnx_dir, tmp_path / "m")
    weights = folder / ("weights.pt" if runtime == "torch" else "model.onnx")
    assert load_predictor(folder).runtime == runtime  # intact: loads
    blob = bytearray(weights.read_bytes())
    if damage == "flip-a-byte":
        blob[len(blob) // 2] ^= 0x01
        weights.write_bytes(bytes(blob))
    elif damage == "truncate":
        weights.write_bytes(bytes(blob[: len(blob) - 10]))
    else:
        weights.unlink()
    expected = "is missing" if damage == "delete" else "does not match its sha256"
    for attempt in (lambda: verify_model(folder), lambda: load_predictor(folder)):
        with pytest.raises(MlopsError, match=f"{weights.name} {expected}") as info:
            attempt()
        assert "\n" not in str(info.value)


def test_an_onnx_model_loads_and_predicts_without_importing_torch(
    saved: tuple[PreparedData, Path, Path], tmp_path: Path
) -> None:
    data, _, onnx_dir = saved
    # CSV, not Parquet: pyarrow's reader threads can abort the interpreter at exit now and
    # then ("terminate called without an active exception", apache/arrow#34314), which
    # failed CI once and has nothing to do with what this test is about.
    rows = tmp_path / "rows.csv"
    data.test.head(50).to_csv(rows, index=False)
    script = f"""
import sys
import pandas as pd
from pipelines.artifact import load_predictor
p = load_predictor({str(onnx_dir)!r})
out = p.predict(pd.read_csv({str(rows)!r}), strict=True)
print(len(out), p.runtime, "torch" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["50", "onnx", "False"]


def _row(data: PreparedData, **changes: object) -> pd.DataFrame:
    row = data.test.head(1).copy().astype(object)
    for k, v in changes.items():
        row[k] = [v]
    return row


@pytest.mark.parametrize(
    ("changes", "drop", "field", "rule"),
    [
        ({"Torque [Nm]": float("nan")}, None, "Torque [Nm]", "required"),
        ({"Torque [Nm]": None}, None, "Torque [Nm]", "required"),
        ({"Torque [Nm]": float("inf")}, None, "Torque [Nm]", "finite"),
        ({"Air temperature [K]": -float("inf")}, None, "Air temperature [K]", "finite"),
        ({"Torque [Nm]": "12 Nm"}, None, "Torque [Nm]", "type"),
        ({"Type": "X"}, None, "Type", "unseen category"),
        ({"Type": None}, None, "Type", "required"),
        ({}, "Tool wear [min]", "Tool wear [min]", "required"),
    ],
    ids=["nan", "null", "inf", "minus-inf", "text", "unseen-category", "null-category", "missing"],
)
def test_the_strict_transform_names_the_field_and_the_rule(
    saved: tuple[PreparedData, Path, Path],
    changes: dict[str, object],
    drop: str | None,
    field: str,
    rule: str,
) -> None:
    data, _, onnx_dir = saved
    predictor = load_predictor(onnx_dir)
    row = _row(data, **changes)
    if drop:
        row = row.drop(columns=drop)
    with pytest.raises(InputError) as info:
        predictor.predict(row, strict=True)
    assert (info.value.field, info.value.rule) == (field, rule)
    assert f"field {field!r}: {rule}" in str(info.value)
    if rule in ("required", "unseen category") and not drop:
        # training's own entry point still imputes (validation is where such rows are flagged)
        assert len(predictor.predict(row)) == 1


def test_strict_and_lenient_agree_on_good_rows(saved: tuple[PreparedData, Path, Path]) -> None:
    data, torch_dir, _ = saved
    predictor = load_predictor(torch_dir)
    good = data.test.head(200)
    assert np.array_equal(predictor.scores(good, strict=True), predictor.scores(good))
