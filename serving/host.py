"""What one server worker serves, and how it changes without a restart.

The registry's deployment state (production, canary + share, shadow) is the only source of
truth. Each worker polls its revision counter; on a change it loads the new version(s) beside
the ones serving, checks their sha256 against the manifest, runs a smoke prediction on rows
built from the manifest, and only then replaces its `Routes` in one assignment. A request takes
the routes once, when it starts, so it finishes on the versions it started with. A version that
fails any check never gets traffic: the old one keeps serving and the failure is reported.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlops.store import DeploymentStateRecord, ModelRecord, Store
from pipelines.artifact import Predictor, load_predictor, read_manifest
from serving.schema import InputSchema, smoke_records

log = logging.getLogger("mlops.serving")

ROLES = ("production", "canary", "shadow")


@dataclass(frozen=True)
class Loaded:
    """A version in memory, checked and ready."""

    id: int
    name: str
    version: int
    predictor: Predictor

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


@dataclass(frozen=True)
class Routes:
    """An immutable snapshot of what answers: swapped whole, never edited."""

    revision: int = -1
    production: Loaded | None = None
    canary: Loaded | None = None
    share: float = 0.0
    shadow: Loaded | None = None

    def pick(self, key: str) -> tuple[Loaded | None, str]:
        """The version that answers a request keyed `key` (client or request id), and its route."""
        if self.canary is not None and self.share > 0 and canary_side(key, self.share):
            return self.canary, "canary"
        return self.production, "production"


def canary_side(key: str, share: float) -> bool:
    """True for keys that go to the canary: a stable hash, the same in every worker and run."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def disagreements(a: list[Any], b: list[Any], tolerance: float) -> list[int]:
    """The records where two versions' answers differ (review material): another class, or,
    for regression, values further apart than `tolerance`."""
    return [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if _disagree(x, y, tolerance)]


def _disagree(a: Any, b: Any, tolerance: float) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) > tolerance
    return bool(a != b)


@dataclass
class SwapReport:
    revision: int
    loaded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # ref -> why


class ModelHost:
    """Holds the current Routes of one model name and refreshes them from the store."""

    def __init__(
        self,
        store: Store,
        name: str,
        schema: InputSchema,
        *,
        resolve_path: Callable[[ModelRecord], Path],
        on_swap: Callable[[SwapReport], None] | None = None,
        worker: str = "",
    ) -> None:
        self.store, self.name, self.schema = store, name, schema
        self.resolve_path, self.on_swap, self.worker = resolve_path, on_swap, worker
        self.routes = Routes()
        self._refused: dict[int, str] = {}  # version id -> why, until a forced reload
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self.routes.production is not None

    def refresh(self, *, force: bool = False) -> SwapReport | None:
        """Bring the routes up to the deployment state; None when nothing changed."""
        with self._lock:
            revision = self.store.deployment_revision(self.name)
            if revision == self.routes.revision and not force:
                return None
            if force:
                self._refused.clear()
            state = self.store.deployment_state(self.name)
            report = SwapReport(revision)
            new = self._build(state, revision, report)
            self.routes = new  # the swap: one assignment
        if report.failed:
            for ref, why in report.failed.items():
                log.error("refused to serve %s: %s", ref, why)
                try:
                    self.store.record_serving_event(
                        self.name, "swap-failed", ref, reason=why, actor=self.worker
                    )
                except Exception:  # the report is best effort; serving goes on
                    log.exception("could not record the refused swap")
        if self.on_swap:
            self.on_swap(report)
        return report

    def _build(
        self, state: DeploymentStateRecord | None, revision: int, report: SwapReport
    ) -> Routes:
        old = self.routes
        if state is None:
            return Routes(revision=revision)
        chosen: dict[str, Loaded | None] = {}
        for role in ROLES:
            version_id = getattr(state, f"{role}_version_id")
            current: Loaded | None = getattr(old, role)
            if version_id is None:
                chosen[role] = None
            elif current is not None and current.id == version_id:
                chosen[role] = current
            else:
                reuse = next(
                    (
                        m
                        for m in (old.production, old.canary, old.shadow)
                        if m and m.id == version_id
                    ),
                    None,
                )
                chosen[role] = reuse or self._load(version_id, report)
                if chosen[role] is None:
                    # Refused: the version serving this role before keeps serving it; a
                    # refused canary or shadow just gets no traffic.
                    chosen[role] = current if role == "production" else None
        canary = chosen["canary"]
        return Routes(
            revision=revision,
            production=chosen["production"],
            canary=canary,
            share=state.canary_share if canary is not None else 0.0,
            shadow=chosen["shadow"],
        )

    def _load(self, version_id: int, report: SwapReport) -> Loaded | None:
        if version_id in self._refused:
            return None
        record: ModelRecord | None = None
        try:
            record = self.store.get_model(version_id)
            path = self.resolve_path(record)
            why = self.schema.compatible(read_manifest(path).get("schema", {}))
            if why:
                raise ValueError(f"{why}; start a new server for it")
            predictor = load_predictor(path, threads=1)  # checks every sha256 first
            smoke(predictor)
        except Exception as exc:
            ref = f"{record.name}:{record.version}" if record else f"version id {version_id}"
            why = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
            self._refused[version_id] = why
            report.failed[ref] = why
            return None
        loaded = Loaded(record.id, record.name, record.version, predictor)
        report.loaded.append(loaded.ref)
        log.info("loaded %s", loaded.ref)
        return loaded

    def poll_forever(self, period_s: float, stop: threading.Event) -> None:
        while not stop.wait(period_s):
            try:
                self.refresh()
            except Exception:  # a store hiccup must not kill the poller
                log.exception("deployment poll failed; serving what was loaded")


def smoke(predictor: Predictor) -> None:
    """Predict on rows built from the manifest; finite answers of the right shape, or raise."""
    schema = predictor.manifest.get("schema") or {}
    rows = smoke_records(schema) if schema.get("input") else []
    if not rows:
        raise ValueError("the manifest has no input schema to build a smoke check from")
    x = predictor.preprocessor.encode_records(rows)
    scores = predictor.scores_from_inputs(x)
    if len(scores) != len(rows) or not np.isfinite(scores).all():
        raise ValueError("the smoke prediction is not finite")
    if predictor.config.task == "classification":
        sums = scores.sum(axis=1)
        if not np.allclose(sums, 1.0, atol=1e-3):
            raise ValueError("the smoke probabilities do not sum to 1")
