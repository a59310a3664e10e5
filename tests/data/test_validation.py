"""The ai4i data contract: bad batches are caught and named, clean batches pass, policies act.

Every corrupt batch is built from the generator plus one pandas edit and goes through the real
ingestion (parquet, DVC, store) before it is validated, as a bad upstream export would.
One workspace serves the module (GX and DVC set-up is slow); every test ingests its own batch.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlops.errors import MlopsError
from mlops.settings import Workspace
from mlops.store import Store
from pipelines.ingest import LoadedSource, checkout, ingest
from pipelines.sources import AI4I_SPEC, generate_ai4i
from pipelines.validate import ValidationReport, require_trainable, validate_batch

ROWS = 600
LIMITS = {"min_rows": 100, "max_rows": 10_000_000}


@pytest.fixture(scope="module")
def vws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    from pipelines.init import init_workspace

    with pytest.MonkeyPatch.context() as mp:
        for key in ("MLOPS_HOME", "MLOPS_DATABASE_URL", "MLOPS_WORKSPACE"):
            mp.delenv(key, raising=False)
        for key in ("DVC_NO_ANALYTICS", "DO_NOT_TRACK"):
            mp.setenv(key, "1")
        mp.setenv("GX_ANALYTICS_ENABLED", "false")
        yield init_workspace(tmp_path_factory.mktemp("validation") / "ws")


@pytest.fixture(scope="module")
def store(vws: Workspace) -> Iterator[Store]:
    s = Store.open(vws.database_url)
    yield s
    s.close()


def ingest_frame(ws: Workspace, store: Store, frame: pd.DataFrame) -> str:
    return ingest(ws, store, LoadedSource(frame, AI4I_SPEC, "test")).batch.id


def validate(ws: Workspace, store: Store, batch_id: str, policy: str = "block") -> ValidationReport:
    return validate_batch(ws, store, batch_id, policy=policy, **LIMITS)


def rules(report: ValidationReport) -> set[tuple[str, str]]:
    return {(f["column"], f["rule"]) for f in report.failures}


def _nulls(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[[3, 50, 51], "Torque [Nm]"] = np.nan  # broken torque sensor
    return df


def _out_of_range(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[10:14, "Air temperature [K]"] = 27.0  # a station switched to Celsius
    return df


def _unseen_category(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[7, "Type"] = "X"  # a new product line
    return df


def _wrong_dtype(df: pd.DataFrame) -> pd.DataFrame:
    df["Torque [Nm]"] = df["Torque [Nm]"].map(lambda v: f"{v} Nm")  # units pasted into values
    return df


def _missing_column(df: pd.DataFrame) -> pd.DataFrame:
    # RNF is excluded from the features, so ingestion takes the batch; a missing feature or
    # target column is already refused by ingestion (DatasetSpec.check).
    return df.drop(columns=["RNF"])


def _extra_column(df: pd.DataFrame) -> pd.DataFrame:
    df["Operator"] = "anna"  # an export change; could as well be a leaked label
    return df


def _duplicate_ids(df: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([df, df.iloc[:20]], ignore_index=True)  # a batch appended twice


def _label_outside_set(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[[5, 6], "Machine failure"] = 2  # a new failure code
    return df


def _empty(df: pd.DataFrame) -> pd.DataFrame:
    return df.iloc[:0]


IN_SET = "expect_column_values_to_be_in_set"
CORRUPTIONS: dict[str, tuple[Callable[[pd.DataFrame], pd.DataFrame], str, str]] = {
    "nulls": (_nulls, "Torque [Nm]", "expect_column_values_to_not_be_null"),
    "out_of_range": (_out_of_range, "Air temperature [K]", "expect_column_values_to_be_between"),
    "unseen_category": (_unseen_category, "Type", IN_SET),
    "wrong_dtype": (_wrong_dtype, "Torque [Nm]", "expect_column_values_to_be_in_type_list"),
    "missing_column": (_missing_column, "RNF", "expect_table_columns_to_match_set"),
    "extra_column": (_extra_column, "Operator", "expect_table_columns_to_match_set"),
    "duplicate_ids": (_duplicate_ids, "UDI", "expect_column_values_to_be_unique"),
    "label_outside_set": (_label_outside_set, "Machine failure", IN_SET),
    "empty": (_empty, "(table)", "expect_table_row_count_to_be_between"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corrupt_batch_is_caught_with_column_and_rule(
    vws: Workspace, store: Store, name: str
) -> None:
    corrupt, column, rule = CORRUPTIONS[name]
    batch_id = ingest_frame(vws, store, corrupt(generate_ai4i(ROWS, seed=11)))

    report = validate(vws, store, batch_id)

    assert not report.success and report.outcome == "failed" and report.blocked
    assert (column, rule) in rules(report), report.failures
    failure = next(f for f in report.failures if (f["column"], f["rule"]) == (column, rule))
    assert failure["note"].startswith("Guards against ")
    assert f"{column}: {rule}" in report.summary() or len(report.failures) > 3
    assert store.get_batch(batch_id).status == "failed"
    latest = store.latest_validation(batch_id)
    assert latest is not None and latest.outcome == "failed"
    assert (column, rule) in {(f["column"], f["rule"]) for f in latest.failures}


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_clean_batches_pass(vws: Workspace, store: Store, seed: int) -> None:
    batch_id = ingest_frame(vws, store, generate_ai4i(2000, seed=seed))

    report = validate(vws, store, batch_id)

    assert report.success, report.failures  # no false alarms
    assert report.outcome == "passed" and report.evaluated >= 40 and not report.failures
    assert store.get_batch(batch_id).status == "passed"
    assert [b.id for b in require_trainable(store, [batch_id])] == [batch_id]


def test_quarantine_moves_the_bytes_and_keeps_them_restorable(vws: Workspace, store: Store) -> None:
    batch_id = ingest_frame(vws, store, _out_of_range(generate_ai4i(ROWS, seed=13)))
    raw = vws.resolve(store.get_batch(batch_id).path)
    original = raw.read_bytes()

    report = validate(vws, store, batch_id, policy="quarantine")

    moved = vws.quarantine_dir / raw.name
    assert report.outcome == "quarantined" and report.blocked
    assert not raw.exists() and not raw.with_name(raw.name + ".dvc").exists()
    assert moved.read_bytes() == original
    assert moved.with_name(moved.name + ".dvc").is_file()  # still DVC-tracked
    batch = store.get_batch(batch_id)
    assert batch.status == "quarantined" and batch.path == vws.relative(moved)
    assert batch_id not in {b.id for b in store.trainable_batches("ai4i")}
    with pytest.raises(MlopsError, match=rf"{batch_id}.*quarantined"):
        require_trainable(store, [batch_id])

    moved.unlink()
    _, restored = checkout(vws, store, batch_id)

    assert restored == moved and restored.read_bytes() == original

    # The owner accepts the batch after all: a run that lets it through takes it back to raw/.
    assert validate(vws, store, batch_id, policy="warn").outcome == "warned"
    assert vws.resolve(store.get_batch(batch_id).path) == raw and raw.read_bytes() == original


def test_block_records_failed_and_training_refuses(vws: Workspace, store: Store) -> None:
    bad = ingest_frame(vws, store, _nulls(generate_ai4i(ROWS, seed=14)))
    good = ingest_frame(vws, store, generate_ai4i(ROWS, seed=15))
    for batch_id in (bad, good):
        validate(vws, store, batch_id)

    assert vws.resolve(store.get_batch(bad).path).parent == vws.raw_dir  # block does not move
    with pytest.raises(MlopsError, match=rf"batch {bad} .*failed"):
        require_trainable(store, [good, bad])


def test_unvalidated_batch_is_not_trainable(vws: Workspace, store: Store) -> None:
    batch_id = ingest_frame(vws, store, generate_ai4i(ROWS, seed=16))

    with pytest.raises(MlopsError, match=rf"{batch_id}.*not been validated"):
        require_trainable(store, [batch_id])


def test_warn_records_and_lets_through(vws: Workspace, store: Store) -> None:
    batch_id = ingest_frame(vws, store, _unseen_category(generate_ai4i(ROWS, seed=17)))

    report = validate(vws, store, batch_id, policy="warn")

    assert not report.success and report.outcome == "warned" and not report.blocked
    assert store.get_batch(batch_id).status == "warned"
    assert require_trainable(store, [batch_id])[0].id == batch_id
    (failure,) = report.failures  # what was seen, for the table, the store and the flow log
    assert failure["unexpected_count"] == 1 and failure["partial_unexpected_list"] == ["X"]
    assert failure["expected"] == {"value_set": ["L", "M", "H"]}
    assert "new product line" in failure["note"] and failure["risk"] == "new product line"


def test_unknown_policy_is_refused(vws: Workspace, store: Store) -> None:
    batch_id = ingest_frame(vws, store, generate_ai4i(ROWS, seed=19))

    with pytest.raises(MlopsError, match="unknown validation policy 'ignore'"):
        validate(vws, store, batch_id, policy="ignore")


def _failed_sections(page: str) -> dict[str, list[str]]:
    """Column (or "Table-Level Expectations") -> texts of its failed expectation rows."""
    out: dict[str, list[str]] = {}
    for block in page.split('class="ge-section')[1:]:
        title = re.search(r"<h\d[^>]*>(.*?)</h\d>", block, re.S)
        # Each expectation row starts with its status icon; a row runs to the next icon.
        rows = re.split(r'(?=<i class="fas fa-(?:times|check))', block)
        failed = [_text(r) for r in rows if r.startswith('<i class="fas fa-times text-danger"')]
        if title and failed and _text(title.group(1)) != "Overview":
            out[_text(title.group(1))] = failed
    return out


def _text(fragment: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def test_data_docs_page_lists_the_failures(vws: Workspace, store: Store) -> None:
    df = _unseen_category(_out_of_range(generate_ai4i(ROWS, seed=20)))
    batch_id = ingest_frame(vws, store, df)

    report = validate(vws, store, batch_id)

    assert report.docs_path is not None and report.docs_path.suffix == ".html"
    assert report.docs_path.is_relative_to(vws.gx_dir / "uncommitted")  # kept out of git
    latest = store.latest_validation(batch_id)
    assert latest is not None and vws.resolve(str(latest.docs_path)) == report.docs_path
    page = report.docs_path.read_text()
    assert batch_id in page
    failed = _failed_sections(page)
    assert set(failed) == {"Type", "Air temperature [K]"}, failed
    # GX renders rules as prose: expect_column_values_to_be_in_set / _to_be_between.
    assert any("values must belong to this set: L M H" in t and "X" in t for t in failed["Type"])
    assert any(
        "values must be greater than or equal to 285" in t and "27.0" in t
        for t in failed["Air temperature [K]"]
    )
    index = vws.gx_dir / "uncommitted" / "data_docs" / "local_site" / "index.html"
    assert index.is_file() and batch_id in index.read_text()


def test_gx_output_stays_out_of_git(vws: Workspace) -> None:
    import subprocess

    def ignored(path: Path) -> bool:
        cmd = ["git", "check-ignore", "-q", str(path)]
        return subprocess.run(cmd, cwd=vws.root, check=False).returncode == 0

    docs = vws.gx_dir / "uncommitted" / "data_docs" / "local_site" / "index.html"
    assert ignored(docs) and ignored(vws.gx_dir / "uncommitted" / "validations")
    for kept in ("expectations/ai4i.json", "checkpoints/ai4i.json", "great_expectations.yml"):
        assert (vws.gx_dir / kept).is_file() and not ignored(vws.gx_dir / kept)


def test_missing_checkpoint_is_recreated_from_the_suite(vws: Workspace, store: Store) -> None:
    """A suite copied in by hand (no validation definition or checkpoint yet) still runs."""
    (vws.gx_dir / "checkpoints" / "ai4i.json").unlink()
    (vws.gx_dir / "validation_definitions" / "ai4i.json").unlink()
    batch_id = ingest_frame(vws, store, generate_ai4i(ROWS, seed=21))

    assert validate(vws, store, batch_id).success
    assert (vws.gx_dir / "checkpoints" / "ai4i.json").is_file()


def test_suite_edits_by_hand_take_effect(vws: Workspace, store: Store, tmp_path: Path) -> None:
    """The suite file is the contract: tightening a range in the JSON changes the verdict."""
    import json

    path = vws.gx_dir / "expectations" / "ai4i.json"
    before = path.read_text()
    suite = json.loads(before)
    for exp in suite["expectations"]:
        if exp["type"] == "expect_column_values_to_be_between" and exp["kwargs"]["column"] == (
            "Torque [Nm]"
        ):
            exp["kwargs"]["max_value"] = 1.0
    try:
        path.write_text(json.dumps(suite, indent=2))
        batch_id = ingest_frame(vws, store, generate_ai4i(ROWS, seed=22))
        report = validate(vws, store, batch_id)
    finally:
        path.write_text(before)

    assert rules(report) == {("Torque [Nm]", "expect_column_values_to_be_between")}
