"""Typed params and workspace settings: overrides, one-line errors, paths kept in the workspace."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mlops.errors import MlopsError
from mlops.params import Params, load_params, parse_overrides
from mlops.settings import get_workspace, redact_url
from mlops.workspace import template_text

ROOT = Path(__file__).resolve().parents[2]


def _params_file(tmp_path: Path, text: str | None = None) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(template_text("params.yaml") if text is None else text)
    return path


def test_template_equals_defaults_and_repo_root(tmp_path: Path) -> None:
    assert load_params(_params_file(tmp_path)) == Params()
    # The repo root is the demo workspace: its params and pipeline are the templates.
    assert (ROOT / "params.yaml").read_text() == template_text("params.yaml")
    assert (ROOT / "dvc.yaml").read_text() == template_text("dvc-pipeline.yaml")


def test_overrides_are_typed(tmp_path: Path) -> None:
    p = load_params(_params_file(tmp_path), ["train.lr=0.01", "train.hidden=[8, 4]"])
    assert p.train.lr == 0.01 and p.train.hidden == [8, 4]
    # no hidden layer: a linear model; a search candidate is the section with its overrides
    p = load_params(_params_file(tmp_path), ["train.hidden=[]", "train.search=[{lr: 0.1}]"])
    assert p.train.hidden == [] and p.train.candidate(p.train.search[0]).lr == 0.1
    assert parse_overrides(["validate.policy=warn"]) == {"validate": {"policy": "warn"}}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.lr=-1"], "train.lr"),
        (["train.epochs=0"], "train.epochs"),
        (["train.hidden=[16, 0]"], "train.hidden"),
        (["train.search=[{hidden: []}, {lr: -1}]"], "candidate 1: lr"),
        (["train.search=[{depth: 3}]"], "candidate 0: depth"),
        (["validate.policy=delete"], "validate.policy"),
        (["train.nope=1"], "train.nope"),
        (["lr=0.1"], "expected section.key=value"),
    ],
)
def test_bad_params_are_one_line(tmp_path: Path, overrides: list[str], message: str) -> None:
    with pytest.raises(MlopsError, match=message.replace(".", r"\.")) as info:
        load_params(_params_file(tmp_path), overrides)
    assert "\n" not in str(info.value)


def test_broken_params_file(tmp_path: Path) -> None:
    with pytest.raises(MlopsError, match="not valid YAML"):
        load_params(_params_file(tmp_path, "train: [unclosed\n"))
    with pytest.raises(MlopsError, match="no params file"):
        load_params(tmp_path / "missing.yaml")


def test_user_paths_stay_inside_the_workspace(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    (root / "inputs").mkdir(parents=True)
    outside = tmp_path / "secret.csv"
    outside.write_text("a\n1\n")
    (root / "inputs" / "link.csv").symlink_to(outside)
    ws = get_workspace(root)
    assert ws.resolve("inputs/x.csv") == root / "inputs" / "x.csv"
    for bad in ("../secret.csv", str(outside), "inputs/../../secret.csv", "inputs/link.csv"):
        with pytest.raises(MlopsError, match="outside the workspace"):
            ws.resolve(bad)


def test_mlops_home_and_database_url_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = get_workspace(tmp_path)
    assert ws.home == tmp_path / ".mlops" and ws.database_url.startswith("sqlite:///")
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("MLOPS_DATABASE_URL", "postgresql+psycopg://u:s3cret@db:5432/m")
    ws = get_workspace(tmp_path)
    assert ws.home == tmp_path / "state" and ws.dvc_remote == tmp_path / "state" / "dvc-remote"
    assert "s3cret" not in redact_url(ws.database_url)


def test_the_repo_has_one_dvc_pipeline() -> None:
    """DVC reads every file named dvc.yaml in a repo: a second one (say, a template) would show
    up as phantom stages in `dvc status` of the demo workspace."""
    tracked = subprocess.run(
        ["git", "ls-files", "*dvc.yaml"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert tracked == ["dvc.yaml"]


# -- secrets stay out of messages; task parameters carry no database URL ---------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg://bob:s3cret@db:5432/mlops", "postgresql+psycopg://bob:***@db:5432/mlops"),
        ("postgresql://bob:s3cret@db:notaport/mlops", "postgresql://bob:***@db:notaport/mlops"),
        ("bob:s3cret@db/mlops", "bob:***@db/mlops"),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
    ],
)  # fmt: skip
def test_database_urls_are_masked_parseable_or_not(url: str, shown: str) -> None:
    from mlops.settings import redact_url

    assert redact_url(url) == shown


def test_a_bad_database_url_error_does_not_print_its_password() -> None:
    from mlops.store import Store

    with pytest.raises(MlopsError) as info:
        Store.open("postgresql://bob:s3cret@db:notaport/mlops")
    assert "s3cret" not in str(info.value) and "bob:***@" in str(info.value)
    assert info.value.__cause__ is None  # nor in a chained exception's text


def test_prefect_tasks_take_the_workspace_folder_not_the_workspace() -> None:
    import inspect

    from flows import lifecycle

    tasks = [lifecycle.ingest_task, lifecycle.validate_task, lifecycle.train_task,
             lifecycle.compress_task]  # fmt: skip
    for t in tasks:
        params = inspect.signature(t.fn).parameters
        assert "root" in params and "ws" not in params, t.name
        assert all("Workspace" not in str(p.annotation) for p in params.values()), t.name
