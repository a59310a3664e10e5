"""Bring your own data: a user's CSV or Parquet, kept OUTSIDE the workspace, through ingest,
validation, training and `mlops run` (real DVC, GX, PyTorch and Prefect; data made here).

The data sets are scikit-learn's `make_classification` and `make_regression`, with the odd
column names real exports have; every batch of one data set is a slice of one generated table,
so good batches share a distribution and only what a test breaks on purpose differs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlops.settings import get_workspace
from mlops.store import ModelRecord, Store

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FEATURES = ["Sensor A [mV]", "temp (°C)", "x 3", "pressure_kPa", "feat-5", "load%"]


def classification_frame(n: int = 2400, seed: int = 0) -> pd.DataFrame:
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=n,
        n_features=6,
        n_informative=4,
        n_redundant=1,
        weights=[0.75],
        class_sep=1.2,
        flip_y=0.01,
        random_state=seed,
    )
    df = pd.DataFrame(x.round(4), columns=FEATURES)
    df["line"] = np.where(x[:, 1] > 0, "north", "south")
    df["failed"] = y.astype(np.int64)
    return df


def regression_frame(n: int = 1200, seed: int = 1) -> pd.DataFrame:
    from sklearn.datasets import make_regression

    x, y = make_regression(n_samples=n, n_features=5, n_informative=4, noise=8.0, random_state=seed)
    df = pd.DataFrame(x.round(4), columns=[f"f{i} [u]" for i in range(5)])
    # Curved, so a network has something to add over the linear baseline the gate compares with.
    curve = 150 * np.sin(2 * x[:, 0]) + 60 * x[:, 1] ** 2
    df["price"] = (3 * y + 200 + curve).round(2)
    return df


@pytest.fixture
def fresh(tmp_path: Path, mlops_cli) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    """An exports folder and, beside it (so outside it), a new workspace."""
    exports, root = tmp_path / "exports", tmp_path / "ws"
    exports.mkdir()
    assert mlops_cli("init", root).exit_code == 0
    return exports, root


def _store(ws_root: Path) -> Store:
    return Store.open(f"sqlite:///{ws_root / '.mlops' / 'mlops.db'}")


def _flat(text: str) -> str:
    """Console output with rich's wrapping undone."""
    return re.sub(r"\s+", " ", text)


def _one_line_error(result) -> str:  # type: ignore[no-untyped-def]
    err = result.stderr.strip()
    assert result.exit_code != 0, result.stdout
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    return err


def assert_beats_trivial(model: ModelRecord, root: Path) -> None:
    """The model beats what ignores its inputs on its own test split (computed here, not
    read from our metrics): the majority class / the mean."""
    folder = get_workspace(root).version_dir(model.path)
    test = pd.read_parquet(folder / "prepared" / "test.parquet")
    m = model.metrics
    if m["task"] == "classification":
        y = test["failed"].to_numpy()
        majority = float(np.bincount(y).max() / len(y))
        prevalence = float(np.mean(y == m["positive_class"]))
        assert m["accuracy"] > majority, (m["accuracy"], majority)
        assert m["pr_auc"] > prevalence + 0.2, (m["pr_auc"], prevalence)
        # our own trivial baseline is that same floor
        assert m["trivial"]["pr_auc"] == pytest.approx(prevalence)
    else:
        y = test["price"].to_numpy(dtype=float)
        mean_rmse = float(np.sqrt(np.mean((y - y.mean()) ** 2)))
        assert m["rmse"] < 0.5 * mean_rmse, (m["rmse"], mean_rmse)
        assert m["r2"] > 0.5
        assert m["trivial"]["rmse"] == pytest.approx(mean_rmse, rel=0.1)


# -- mlops run --source ---------------------------------------------------------------------


@dataclass
class _Ran:
    exit_code: int
    stdout: str
    stderr: str


def _mlops_process(*args: str | Path, prefect_server: bool = True) -> _Ran:
    """`mlops` in its own process, as a user runs it, against the test's Prefect server (or,
    with `prefect_server=False`, with no Prefect settings at all).

    (In-process, Prefect binds its console log handler to the first test's captured stream.)
    """
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    if prefect_server:
        env["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
    proc = subprocess.run(
        ["mlops", *map(str, args)], env=env, capture_output=True, text=True, timeout=600
    )
    return _Ran(proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.parametrize("kind", ["classification-csv", "regression-parquet"])
def test_mlops_run_on_a_file_outside_the_workspace_then_plain_run_stays_on_it(
    kind: str,
    fresh: tuple[Path, Path],
    mlops_cli,  # type: ignore[no-untyped-def]
    prefect_server: None,
) -> None:
    exports, root = fresh
    if kind == "classification-csv":
        name, target, frame = "plant", "failed", classification_frame()
        source = exports / "plant.csv"
        frame.iloc[:900].to_csv(source, index=False)
    else:
        name, target, frame = "prices", "price", regression_frame()
        source = exports / "prices.parquet"
        frame.iloc[:900].to_parquet(source, index=False)

    out = _mlops_process(
        "-w", root, "run", "--source", f"{source.suffix[1:]}:{source}", "--target", target,
        "--set", "serve.bento=false", "--json",
    )  # fmt: skip
    assert out.exit_code == 0, out.stderr
    steps = json.loads(out.stdout)
    # the user's columns became the API: the first version was served and answered
    assert steps["deploy"]["served"].startswith("3 records answered by ")
    assert steps["ingest"]["dataset"] == name and steps["ingest"]["new"] is True
    assert steps["validate"]["outcome"] == "passed"
    with _store(root) as store:
        first = store.get_model(steps["train"]["model"])
        assert first.name == name
        assert_beats_trivial(first, root)

        if kind == "classification-csv":
            # a later export, ingested with no --dataset, joins the data set ...
            later = exports / "plant-later.csv"
            frame.iloc[900:1500].to_csv(later, index=False, sep=";")
            joined = mlops_cli("-w", root, "ingest", "--source", f"csv:{later}", "--json")
            assert joined.exit_code == 0, joined.stderr
            assert json.loads(joined.stdout)["dataset"] == name

        # ... and plain `mlops run` retrains on the workspace's data set, not on ai4i
        again = _mlops_process("-w", root, "run", "--set", "serve.bento=false", "--json")
        assert again.exit_code == 0, again.stderr
        steps = json.loads(again.stdout)
        assert steps["ingest"]["dataset"] == name
        model = store.get_model(steps["train"]["model"])
        assert model.name == name
        assert [d.name for d in store.list_datasets()] == [name]  # no synthetic rows added
        if kind == "classification-csv":
            assert model.version > first.version and len(model.batch_ids) == 2
            assert_beats_trivial(model, root)
        else:  # nothing new: DVC reruns nothing and the same version comes back
            assert model.id == first.id


# -- step by step, no --set -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["classification-parquet", "regression-csv"])
def test_step_by_step_from_a_relative_path_outside_the_workspace(
    kind: str,
    fresh: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    mlops_cli,  # type: ignore[no-untyped-def]
) -> None:
    exports, root = fresh
    if kind == "classification-parquet":
        name, target, frame = "plant", "failed", classification_frame()
        classification_frame().iloc[:900].to_parquet(exports / "plant.parquet", index=False)
        source = "parquet:plant.parquet"
    else:
        name, target, frame = "prices", "price", regression_frame()
        frame.iloc[:900].to_csv(exports / "prices.csv", index=False)
        source = "csv:prices.csv"
    monkeypatch.chdir(exports)  # relative to the current directory, as every CLI does

    ingested = mlops_cli("-w", root, "ingest", "--source", source, "--target", target)
    assert ingested.exit_code == 0, ingested.stderr
    assert f"new data set '{name}'" in ingested.stdout
    validated = mlops_cli("-w", root, "validate")
    assert validated.exit_code == 0, validated.stderr + validated.stdout
    assert (
        "inferred suite" in validated.stdout
        and (root / "gx/expectations" / f"{name}.json").is_file()
    )
    trained = mlops_cli("-w", root, "train")
    assert trained.exit_code == 0, trained.stderr

    with _store(root) as store:
        (model,) = store.list_models()
        assert model.name == name
        assert_beats_trivial(model, root)
        # lineage names a commit, since `mlops init` made one; the tree is dirty after ingest
        git = model.lineage["git"]
        assert re.fullmatch(r"[0-9a-f]{40}", git["commit"]) and git["dirty"] is True

    shown = mlops_cli("-w", root, "models", "show", model.ref)
    assert shown.exit_code == 0
    if kind == "classification-parquet":
        # the positive class (the minority, 1) is in the table, not only in --json
        assert "positive class 1" in _flat(shown.stdout)
        _train_refuses_non_finite_before_rewriting_anything(root, frame, exports, mlops_cli)
    else:
        compressed = mlops_cli("-w", root, "compress")
        assert compressed.exit_code in (0, 3), compressed.stderr
        with _store(root) as store:
            children = [m for m in store.list_models() if m.parent_id == model.id]
        assert len(children) == (1 if compressed.exit_code == 0 else 0)


def _train_refuses_non_finite_before_rewriting_anything(
    root: Path,
    frame: pd.DataFrame,
    exports: Path,
    mlops_cli,  # type: ignore[no-untyped-def]
) -> None:
    bad = frame.iloc[900:1200].copy()
    bad.iloc[3:6, 0] = np.inf
    bad.iloc[7, 2] = -np.inf
    bad.to_parquet(exports / "plant-inf.parquet", index=False)
    assert mlops_cli("-w", root, "ingest", "--source", "parquet:plant-inf.parquet").exit_code == 0
    # `warn` lets the batch through validation: training is the second line of defence
    warned = mlops_cli("-w", root, "validate", "--policy", "warn", "--json")
    assert warned.exit_code == 0 and json.loads(warned.stdout)[0]["outcome"] == "warned"
    watched = [root / "dvc.lock", root / "params.yaml", root / "artifacts/model/weights.pt"]
    before = [p.read_bytes() for p in watched]
    err = _one_line_error(mlops_cli("-w", root, "train"))
    assert "non-finite values (inf or -inf) in 'Sensor A [mV]' (3 row(s)), 'x 3' (1 row(s))" in err
    assert [p.read_bytes() for p in watched] == before
    with _store(root) as store:
        assert len(store.list_models()) == 1


# -- one data set, many exports -------------------------------------------------------------


def test_exports_of_one_data_set_join_it_and_bad_ones_fail_naming_column_and_rule(
    fresh: tuple[Path, Path],
    mlops_cli,  # type: ignore[no-untyped-def]
) -> None:
    exports, root = fresh
    frame = classification_frame()
    frame.iloc[:400].to_csv(exports / "plant.csv", index=False)
    first = mlops_cli(
        "-w", root, "ingest", "--source", f"csv:{exports / 'plant.csv'}", "--target", "failed"
    )
    assert first.exit_code == 0, first.stderr
    assert mlops_cli("-w", root, "validate").exit_code == 0  # infers the suite from this batch

    def ingest(file: str, *extra: str) -> dict:  # type: ignore[type-arg]
        out = mlops_cli("-w", root, "ingest", "--source", f"csv:{exports / file}", *extra, "--json")
        assert out.exit_code == 0, out.stderr
        batch = json.loads(out.stdout)
        assert batch["dataset"] == "plant", batch  # joined, not a new data set per file
        return batch  # type: ignore[no-any-return]

    good = {
        "semicolon.csv": lambda f, p: f.to_csv(p, index=False, sep=";"),
        "excel-de.csv": lambda f, p: f.to_csv(p, index=False, sep=";", decimal=","),
        "bom.csv": lambda f, p: f.to_csv(p, index=False, encoding="utf-8-sig"),
        "reordered.csv": lambda f, p: f[list(reversed(f.columns))].to_csv(p, index=False),
    }
    for i, (file, write) in enumerate(good.items()):
        write(frame.iloc[400 + 300 * i : 700 + 300 * i], exports / file)
        batch = ingest(file, *(["--decimal", ","] if file == "excel-de.csv" else []))
        passed = mlops_cli("-w", root, "validate", batch["id"])
        assert passed.exit_code == 0, f"{file}: {passed.stderr}"
        # how it was read is said; and that it joined the workspace's data set
        said = " | ".join(batch["notes"])
        assert "joining data set 'plant'" in said, said
        expected = {
            "semicolon.csv": ["delimiter: semicolon (';')"],
            "excel-de.csv": ["delimiter: semicolon (';')", "decimal mark: ','"],
            "bom.csv": ["encoding: UTF-8 with a byte-order mark"],
            "reordered.csv": [],
        }[file]
        assert batch["notes"][:-1] == expected, said

    rows = frame.iloc[1600:1900]
    with_inf = rows.copy()
    with_inf.iloc[[3, 50, 120], 0] = [np.inf, -np.inf, np.inf]
    with_inf.to_csv(exports / "inf.csv", index=False)
    pd.concat([rows, rows.iloc[:90]]).to_csv(exports / "dups.csv", index=False)  # 30 % repeated
    text_labels = rows.copy().astype({"failed": object})
    text_labels.iloc[:5, text_labels.columns.get_loc("failed")] = "failure"
    text_labels.to_csv(exports / "text-labels.csv", index=False)
    rows.drop(columns=["load%"]).to_csv(exports / "dropped-column.csv", index=False)
    rows.assign(pressure_kPa=np.nan).to_csv(exports / "empty-column.csv", index=False)
    bad = {
        "inf.csv": "Sensor A [mV]: expect_column_values_to_be_between (non-finite value)",
        "dups.csv": "expect_compound_columns_to_be_unique (duplicated rows)",
        "text-labels.csv": "failed: expect_column_values_to_be_in_type_list (type change)",
        "dropped-column.csv": "load%: expect_table_columns_to_match_set (schema change)",
        "empty-column.csv": "pressure_kPa: expect_column_proportion_of_non_null_values_to_be_between (empty column)",  # noqa: E501
    }
    for file, named in bad.items():
        batch = ingest(file)
        err = _one_line_error(mlops_cli("-w", root, "validate", batch["id"]))
        assert named in err, f"{file}: {err}"
        assert (root / batch["path"]).is_file()  # blocked, never lost

    # a cut-off export is refused at the door, in one line, with nothing written
    text = (exports / "plant.csv").read_text()
    (exports / "cut.csv").write_text(text[: text.rindex(",", 0, len(text) - 5)])
    err = _one_line_error(mlops_cli("-w", root, "ingest", "--source", f"csv:{exports / 'cut.csv'}"))
    assert "the last row (line 401) has" in err and "the file looks truncated" in err

    with _store(root) as store:
        assert [d.name for d in store.list_datasets()] == ["plant"]
        statuses = [b.status for b in store.list_batches()]
    assert statuses == ["passed"] * 5 + ["failed"] * 5
    assert len(list((root / "data" / "raw").glob("*.parquet"))) == 10


def test_text_labels_fail_where_the_reference_had_integers_in_set_too(
    fresh: tuple[Path, Path],
    mlops_cli,  # type: ignore[no-untyped-def]
) -> None:
    exports, root = fresh
    frame = classification_frame(600)
    frame.iloc[:300].to_csv(exports / "a.csv", index=False)
    assert (
        mlops_cli(
            "-w", root, "ingest", "--source", f"csv:{exports / 'a.csv'}", "--target", "failed"
        ).exit_code
        == 0
    )
    labels = frame.iloc[300:].astype({"failed": object})
    labels["failed"] = labels["failed"].map({0: "ok", 1: "failure"})
    labels.to_csv(exports / "b.csv", index=False)
    assert mlops_cli("-w", root, "ingest", "--source", f"csv:{exports / 'b.csv'}").exit_code == 0
    out = mlops_cli("-w", root, "validate", "--json")  # validates both pending batches
    assert out.exit_code != 0
    reports = json.loads(out.stdout)
    assert [r["outcome"] for r in reports] == ["passed", "failed"]
    rules = {(f["column"], f["rule"]) for f in reports[1]["failures"]}
    assert {
        ("failed", "expect_column_values_to_be_in_type_list"),
        ("failed", "expect_column_values_to_be_in_set"),
    } <= rules


def test_a_tiny_reference_says_its_suite_is_narrow(tmp_path: Path, mlops_cli) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "ws"
    assert mlops_cli("init", root).exit_code == 0
    classification_frame(200).iloc[:30].to_csv(tmp_path / "tiny.csv", index=False)
    src = f"csv:{tmp_path / 'tiny.csv'}"
    assert mlops_cli("-w", root, "ingest", "--source", src, "--target", "failed").exit_code == 0
    out = mlops_cli("-w", root, "validate")
    assert "inferred from only 30 row(s) (under 50)" in _flat(out.stderr)
    suite = json.loads((root / "gx/expectations/tiny.json").read_text())
    assert suite["meta"]["reference_rows"] == 30 and "warning" in suite["meta"]


# -- which data set: the workspace's own, or the one named ----------------------------------


def test_several_data_sets_need_a_name_and_the_error_lists_them(tmp_path: Path, mlops_cli) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "ws"
    assert mlops_cli("init", root).exit_code == 0
    classification_frame(300).to_csv(tmp_path / "plant.csv", index=False)
    regression_frame(300).to_csv(tmp_path / "prices.csv", index=False)
    for file, target in (("plant.csv", "failed"), ("prices.csv", "price")):
        args = ("--source", f"csv:{tmp_path / file}", "--target", target, "--dataset", file[:-4])
        assert mlops_cli("-w", root, "ingest", *args).exit_code == 0
    for command in (["train"], ["validate"], ["compress"], ["run"]):
        err = _one_line_error(mlops_cli("-w", root, *command))
        assert "2 data sets (plant, prices): pass --dataset NAME" in err, (command, err)
    (tmp_path / "third.csv").write_text("a,b\n1,2\n")
    err = _one_line_error(
        mlops_cli("-w", root, "ingest", "--source", f"csv:{tmp_path / 'third.csv'}")
    )
    assert "2 data sets (plant, prices): pass --dataset NAME" in err
    # named, a data set is found; joining one with another target is refused
    assert mlops_cli("-w", root, "validate", "--dataset", "prices").exit_code == 0
    err = _one_line_error(
        mlops_cli(
            "-w",
            root,
            "ingest",
            "--source",
            f"csv:{tmp_path / 'prices.csv'}",
            "--dataset",
            "prices",
            "--target",
            "f0 [u]",
        )
    )
    assert "data set 'prices' has target 'price', not 'f0 [u]'" in err
    err = _one_line_error(mlops_cli("-w", root, "train", "--dataset", "nope"))
    assert "no data set 'nope' in this workspace (data sets: plant, prices)" in err


# -- mlops run: bad options fail before Prefect starts --------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "ingest.source=csv:{data}"], "say which column is the label with --target"),
        (["--source", "csv:{data}", "--target", "nope"], "no column 'nope'"),
        (["--source", "csv:{missing}", "--target", "failed"], "file not found"),
        (["--target", "failed"], "--target describe a source: give it with --source"),
        (["--source", "csv:{data}", "--target", "failed", "--task", "ranking"], "task must be"),
        (["--dataset", "nope"], "no data set 'nope'"),
        (["--set", "train.lr=-1"], "train.lr"),
    ],
    ids=["target-missing", "bad-target", "missing-file", "target-without-source", "bad-task",
         "unknown-dataset", "bad-param"],
)  # fmt: skip
def test_run_refuses_bad_options_in_one_line_before_prefect_starts(
    tmp_path: Path,
    args: list[str],
    message: str,
    mlops_cli,  # type: ignore[no-untyped-def]
) -> None:
    root = tmp_path / "ws"
    assert mlops_cli("init", root).exit_code == 0
    data = tmp_path / "plant.csv"
    classification_frame(300).to_csv(data, index=False)
    argv = [a.format(data=data, missing=tmp_path / "nope.csv") for a in args]
    proc = _mlops_process("-w", root, "run", *argv, prefect_server=False)
    err = proc.stderr.strip()
    assert proc.exit_code == 2 and err.startswith("error:") and len(err.splitlines()) == 1, err
    assert message in err
    # no flow ran: the Prefect home was never created, nothing was ingested
    assert not (root / ".mlops" / "prefect").exists()
    with _store(root) as store:
        assert store.list_batches() == []


# -- mlops init -----------------------------------------------------------------------------


def test_init_commits_what_it_wrote_and_only_that(tmp_path: Path, mlops_cli) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "proj"
    root.mkdir()
    (root / "my-notes.txt").write_text("not ours to commit")
    assert mlops_cli("init", root).exit_code == 0

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True).stdout

    assert git("log", "--format=%s").splitlines() == ["mlops init: workspace"]
    committed = git("ls-files").splitlines()
    assert "params.yaml" in committed and "gx/expectations/ai4i.json" in committed
    assert "my-notes.txt" not in committed and not any(f.startswith(".mlops") for f in committed)
    assert git("status", "--porcelain").splitlines() == ["?? my-notes.txt"]
    # init again (or inside an existing repository) makes no further commit
    assert mlops_cli("init", root).exit_code == 0
    assert len(git("log", "--format=%s").splitlines()) == 1
