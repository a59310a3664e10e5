"""requirements.lock against pyproject.toml and the installed environment: `make setup` and CI
install every package at the locked version, so the lock must satisfy what pyproject.toml asks
and be what is installed. A new upstream release can then no longer change a fresh install
(SQLAlchemy 2.1 silently stopped every Prefect schedule)."""

from __future__ import annotations

import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    return [Requirement(r) for r in [*project["dependencies"], *extras.get("dev", [])]]


def _locked(text: str) -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        (spec,) = req.specifier  # a lock pins each package exactly once
        assert spec.operator == "==", f"requirements.lock: {line!r} is not an exact pin"
        pins[canonicalize_name(req.name)] = Version(spec.version)
    return pins


def disagreements(declared: list[Requirement], pins: dict[str, Version]) -> list[str]:
    """What pyproject.toml asks that the lock does not give: a package missing from the lock,
    or pinned at a version outside pyproject's range."""
    out = []
    for req in declared:
        if req.marker is not None and not req.marker.evaluate({"extra": "dev"}):
            continue
        pin = pins.get(canonicalize_name(req.name))
        if pin is None:
            out.append(f"{req.name}: in pyproject.toml, not in requirements.lock")
        elif not req.specifier.contains(pin, prereleases=True):
            out.append(f"{req.name}: locked {pin}, pyproject.toml asks {req.specifier}")
    return out


def test_the_lock_satisfies_pyproject() -> None:
    pins = _locked((ROOT / "requirements.lock").read_text())
    assert disagreements(_declared(), pins) == [], "run `make lock`"
    # The fix this lock exists for: Prefect's scheduler fails on SQLAlchemy 2.1.
    assert pins["sqlalchemy"] < Version("2.1")


def test_a_disagreement_is_found() -> None:
    # The check itself: a range the pin leaves, and a package the lock lacks.
    pins = {"sqlalchemy": Version("2.1.9")}
    found = disagreements([Requirement("sqlalchemy>=2.0,<2.1"), Requirement("cronsim")], pins)
    assert found == [
        "sqlalchemy: locked 2.1.9, pyproject.toml asks <2.1,>=2.0",
        "cronsim: in pyproject.toml, not in requirements.lock",
    ]


def test_the_environment_is_installed_from_the_lock() -> None:
    """`make setup` installs with the lock as constraints: every locked package that is
    installed has exactly the locked version (a local build label such as +cpu aside)."""
    pins = _locked((ROOT / "requirements.lock").read_text())
    off = []
    for name, pin in pins.items():
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            continue  # a platform-only dependency this machine does not need
        if installed.public != pin.public:
            off.append(f"{name}: installed {installed}, locked {pin}")
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        pytest.skip(f"not the project's .venv ({len(off)} packages differ from the lock)")
    assert off == [], "reinstall with `make setup`"
