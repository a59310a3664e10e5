"""`mlops validate` end to end: params, policy override, JSON, exit codes, suite inference."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from mlops.settings import Workspace


def _batches(mlops_cli: Any, ws: Workspace) -> list[dict[str, Any]]:
    result = mlops_cli("-w", ws.root, "data", "list", "--json")
    assert result.exit_code == 0, result.stderr
    return list(json.loads(result.stdout))


def _ingest(mlops_cli: Any, ws: Workspace, *args: str) -> str:
    result = mlops_cli("-w", ws.root, "ingest", *args, "--json")
    assert result.exit_code == 0, result.stderr
    return str(json.loads(result.stdout)["id"])


def _sensor_table(rows: int, seed: int) -> pd.DataFrame:
    """A small table the project has never seen: ids, two sensors, a grade, a binary label."""
    rng = np.random.default_rng(seed)
    pressure = rng.normal(5.0, 0.5, rows).round(3)  # bar
    flow = rng.uniform(10, 40, rows).round(2)
    grade = rng.choice(["A", "B", "C"], rows)
    return pd.DataFrame(
        {
            "sample_id": np.arange(1000, 1000 + rows),
            "pressure_bar": pressure,
            "flow_lpm": flow,
            "grade": grade,
            "defect": ((pressure > 5.6) | (grade == "C")).astype(int),
        }
    )


def test_validate_passes_a_clean_batch_and_prints_json(ws: Workspace, mlops_cli: Any) -> None:
    batch_id = _ingest(mlops_cli, ws, "--rows", "500", "--seed", "7")

    result = mlops_cli("-w", ws.root, "validate", batch_id[:10], "--json")

    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["batch_id"] == batch_id and report["outcome"] == "passed"
    assert report["failures"] == [] and Path(report["docs_path"]).is_file()
    assert _batches(mlops_cli, ws)[0]["status"] == "passed"


def test_policy_comes_from_params_and_the_option_overrides_it(
    ws: Workspace, mlops_cli: Any
) -> None:
    params = yaml.safe_load(ws.params_path.read_text())
    params["validate"]["policy"] = "warn"
    ws.params_path.write_text(yaml.safe_dump(params))
    # 50 rows: below validate.min_rows (100), so the row-count rule fails.
    batch_id = _ingest(mlops_cli, ws, "--rows", "50", "--seed", "8")

    warned = mlops_cli("-w", ws.root, "validate", batch_id)

    assert warned.exit_code == 0, warned.stderr
    assert "warned" in warned.stdout and "expect_table_row_count_to_be_between" in warned.stdout

    blocked = mlops_cli("-w", ws.root, "validate", batch_id, "--policy", "quarantine")

    assert blocked.exit_code != 0
    assert "expect_table_row_count_to_be_between" in blocked.stdout  # the failures table
    assert batch_id in blocked.stderr and "quarantined" in blocked.stderr  # one-line reason
    record = _batches(mlops_cli, ws)[0]
    assert record["status"] == "quarantined" and record["path"].startswith("data/quarantine/")
    assert (ws.root / record["path"]).is_file()


def test_bad_policy_is_one_line_error(ws: Workspace, mlops_cli: Any) -> None:
    batch_id = _ingest(mlops_cli, ws, "--rows", "200", "--seed", "9")

    result = mlops_cli("-w", ws.root, "validate", batch_id, "--policy", "ignore")

    assert result.exit_code == 2
    assert "unknown validation policy 'ignore'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_init_infers_a_suite_for_a_new_csv(
    ws: Workspace, mlops_cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ws.root)  # source paths are relative to the current directory
    clean = _sensor_table(400, seed=1)
    clean.to_csv(ws.root / "sensors.csv", index=False)
    batch_id = _ingest(mlops_cli, ws, "--source", "csv:sensors.csv", "--target", "defect")

    # no suite yet: the first validation infers one from the data set's first batch
    first = mlops_cli("-w", ws.root, "validate", batch_id)

    assert first.exit_code == 0, first.stderr
    said = " ".join(first.stdout.split())
    suite = "inferred suite gx/expectations/sensors.json for data set 'sensors'"
    assert f"{suite} from its first batch {batch_id}" in said
    init = mlops_cli("-w", ws.root, "validate", "--init", batch_id, "--force")

    assert init.exit_code == 0, init.stderr
    suite_file = ws.gx_dir / "expectations" / "sensors.json"
    suite = json.loads(suite_file.read_text())  # GX's own format, reviewable in git
    kinds = {(e["type"], e["kwargs"].get("column")) for e in suite["expectations"]}
    assert ("expect_column_values_to_be_unique", "sample_id") in kinds
    assert ("expect_column_values_to_be_in_set", "defect") in kinds
    assert ("expect_column_values_to_be_in_set", "grade") in kinds
    assert ("expect_column_values_to_be_between", "pressure_bar") in kinds
    assert all(e["notes"].startswith("Guards against") for e in suite["expectations"])

    again = mlops_cli("-w", ws.root, "validate", "--init", batch_id)
    assert again.exit_code == 2 and "--force" in again.stderr

    passed = mlops_cli("-w", ws.root, "validate", batch_id, "--json")

    assert passed.exit_code == 0, passed.stdout
    assert json.loads(passed.stdout)["outcome"] == "passed"

    corrupt = _sensor_table(400, seed=2)
    corrupt.loc[:39, "pressure_bar"] *= 100_000  # 10% of rows logged in Pa, not bar
    corrupt.loc[5, "grade"] = "Z"
    corrupt.loc[[7, 8], "sample_id"] = corrupt.loc[6, "sample_id"]
    corrupt.to_csv(ws.root / "sensors_bad.csv", index=False)
    bad_id = _ingest(
        mlops_cli, ws, "--source", "csv:sensors_bad.csv", "--target", "defect",
        "--dataset", "sensors",
    )  # fmt: skip

    failed = mlops_cli("-w", ws.root, "validate", bad_id, "--json")

    assert failed.exit_code != 0
    report = json.loads(failed.stdout)
    found = {(f["column"], f["rule"]) for f in report["failures"]}
    assert found == {
        ("pressure_bar", "expect_column_values_to_be_between"),
        ("grade", "expect_column_values_to_be_in_set"),
        ("sample_id", "expect_column_values_to_be_unique"),
    }
    assert report["outcome"] == "failed"

    forced = mlops_cli("-w", ws.root, "validate", "--init", batch_id, "--force")
    assert forced.exit_code == 0, forced.stderr
