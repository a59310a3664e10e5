"""The store's API: the only code in the project that speaks SQL.

Every method runs in its own transaction and returns plain records, detached from the session,
so callers never hold a database connection while they do slow work.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from mlops.errors import MlopsError, NotFoundError
from mlops.store import db
from mlops.store.models import (
    Batch,
    Dataset,
    Deployment,
    DeploymentEvent,
    DeploymentState,
    DriftEvent,
    DriftReport,
    Label,
    ModelAlias,
    ModelVersion,
    ModelVersionBatch,
    Package,
    Review,
    StageEvent,
    TrainingRun,
    Validation,
    utcnow,
)
from mlops.store.records import (
    AliasRecord,
    BatchRecord,
    DatasetRecord,
    DeploymentEventRecord,
    DeploymentRecord,
    DeploymentStateRecord,
    DriftEventRecord,
    DriftRecord,
    LabelRecord,
    ModelRecord,
    PackageRecord,
    ReviewRecord,
    RunRecord,
    StageEventRecord,
    ValidationRecord,
    _to,
)

TRAINABLE_OUTCOMES = ("passed", "warned")
ALIASES = ("production", "staging", "canary", "shadow")
DEPLOY_ACTIONS = ("promote", "canary", "shadow", "rollback", "override", "clear")
# What a server reports about a deployment change it could not carry out (audit only: these
# leave the state and its revision as they are).
SERVING_ACTIONS = ("swap-failed",)
_RETRIES = 5
STAGES = ("candidate", "staging", "production", "archived", "rejected")
# Which stage changes each action may make. The gate decides candidates; a release manager
# promotes what the gate staged; anything else that reaches staging or production is an
# override, with a reason, on record.
TRANSITIONS: dict[str, frozenset[tuple[str, str]]] = {
    "gate": frozenset({("candidate", "staging"), ("candidate", "rejected")}),
    "promote": frozenset({("staging", "production")}),
    "archive": frozenset(
        (s, "archived") for s in ("candidate", "staging", "production", "rejected")
    ),
    "override": frozenset(
        (s, t) for s in ("candidate", "rejected", "archived") for t in ("staging", "production")
    ),
}
# (A rollback is its own method, Store.rollback: it archives production and restores the
# previous one in one move, audited with action "rollback".)


def _refusal(ref: str, current: str, stage: str, action: str) -> str:
    """Why a stage change is refused, and what would be allowed instead."""
    if stage in ("staging", "production") and current in ("candidate", "rejected", "archived"):
        how = "the gate did not stage it" if current != "archived" else "it was archived"
        if stage == "production" and current == "candidate":
            how = "it has not passed the gate"
        return (
            f"{ref} is {current}: it cannot go to {stage} because {how}; a person may overrule "
            f"with --override --reason TEXT (kept on record)"
        )
    return f"{ref} is {current}: {action} cannot move it to {stage}"


def _batch(b: Batch) -> BatchRecord:
    return _to(BatchRecord, b)


def _validation(v: Validation) -> ValidationRecord:
    return _to(ValidationRecord, v)


def _run(r: TrainingRun) -> RunRecord:
    return _to(RunRecord, r)


def _state(d: DeploymentState) -> DeploymentStateRecord:
    return _to(DeploymentStateRecord, d)


def _model(m: ModelVersion) -> ModelRecord:
    return _to(ModelRecord, m, batch_ids=sorted(b.id for b in m.batches))


class Store:
    """The metadata store. Open it with `Store.open(url)`; the schema is migrated on first use."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, url: str, *, migrate: bool = True) -> Store:
        engine = db.make_engine(url)
        if migrate and db.current_revision(engine) != db.head_revision():
            db.upgrade(engine)
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def revision(self) -> str | None:
        return db.current_revision(self.engine)

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    # -- datasets ---------------------------------------------------------------------------

    def upsert_dataset(self, name: str, task: str, spec: dict[str, Any]) -> None:
        for attempt in range(_RETRIES):
            try:
                with self._tx() as s:
                    row = s.get(Dataset, name)
                    if row is None:
                        s.add(Dataset(name=name, task=task, spec=spec))
                    else:
                        row.task, row.spec = task, spec
                return
            except IntegrityError:
                # Another process inserted the same name first; the retry updates its row.
                if attempt == _RETRIES - 1:
                    raise

    def create_dataset(
        self, name: str, task: str, spec: dict[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        """Record a new data set; one that exists keeps its spec. Returns (spec, created)."""
        try:
            with self._tx() as s:
                row = s.get(Dataset, name)
                if row is not None:
                    return dict(row.spec), False
                s.add(Dataset(name=name, task=task, spec=spec))
                return dict(spec), True
        except IntegrityError:
            # Another process founded the same data set between our read and our insert.
            return self.get_dataset_spec(name), False

    def list_datasets(self) -> list[DatasetRecord]:
        """Every data set with its batch count and newest batch time, oldest data set first."""
        q = (
            select(Dataset, func.count(Batch.id), func.max(Batch.created_at))
            .outerjoin(Batch, Batch.dataset == Dataset.name)
            .group_by(Dataset.name)
            .order_by(Dataset.created_at, Dataset.name)
        )
        with self._tx() as s:
            return [
                DatasetRecord(
                    name=d.name,
                    task=d.task,
                    spec=dict(d.spec),
                    created_at=d.created_at,
                    batches=int(n),
                    last_batch_at=last,
                )
                for d, n, last in s.execute(q)
            ]

    def get_dataset_spec(self, name: str) -> dict[str, Any]:
        with self._tx() as s:
            row = s.get(Dataset, name)
            if row is None:
                raise NotFoundError(f"no data set named {name!r} in the store")
            return dict(row.spec)

    # -- batches ----------------------------------------------------------------------------

    def add_batch(
        self,
        *,
        batch_id: str,
        dataset: str,
        source: str,
        path: str,
        dvc_md5: str,
        rows: int,
        schema_hash: str,
        meta: dict[str, Any] | None = None,
    ) -> tuple[BatchRecord, bool]:
        """Record a batch. Returns (record, created); the same id twice is one batch."""
        try:
            with self._tx() as s:
                existing = s.get(Batch, batch_id)
                if existing is not None:
                    return _batch(existing), False
                row = Batch(
                    id=batch_id,
                    dataset=dataset,
                    source=source,
                    path=path,
                    dvc_md5=dvc_md5,
                    rows=rows,
                    schema_hash=schema_hash,
                    meta=meta or {},
                    status="ingested",
                )
                s.add(row)
                s.flush()
                return _batch(row), True
        except IntegrityError:
            # Another process recorded the same bytes between our read and our insert.
            return self.get_batch(batch_id), False

    def get_batch(self, batch_id: str) -> BatchRecord:
        with self._tx() as s:
            row = s.get(Batch, batch_id)
            if row is None:
                row = s.scalars(select(Batch).where(Batch.id.startswith(batch_id))).first()
            if row is None:
                raise NotFoundError(f"no batch {batch_id!r} in the store (see `mlops data list`)")
            return _batch(row)

    def list_batches(
        self, dataset: str | None = None, status: Sequence[str] | None = None
    ) -> list[BatchRecord]:
        q = select(Batch).order_by(Batch.created_at, Batch.id)
        if dataset:
            q = q.where(Batch.dataset == dataset)
        if status:
            q = q.where(Batch.status.in_(list(status)))
        with self._tx() as s:
            return [_batch(b) for b in s.scalars(q)]

    def move_batch(self, batch_id: str, path: str) -> BatchRecord:
        with self._tx() as s:
            row = s.get(Batch, batch_id)
            if row is None:
                raise NotFoundError(f"no batch {batch_id!r} in the store")
            row.path = path
            s.flush()
            return _batch(row)

    # -- validations ------------------------------------------------------------------------

    def add_validation(
        self,
        *,
        batch_id: str,
        suite: str,
        success: bool,
        policy: str,
        outcome: str,
        evaluated: int,
        failures: list[dict[str, Any]],
        docs_path: str | None,
        batch_path: str | None = None,
    ) -> ValidationRecord:
        """Record a validation and set the batch's status to its outcome, in one transaction."""
        if outcome not in ("passed", "warned", "failed", "quarantined"):
            raise MlopsError(f"unknown validation outcome {outcome!r}")
        with self._tx() as s:
            batch = s.get(Batch, batch_id)
            if batch is None:
                raise NotFoundError(f"no batch {batch_id!r} in the store")
            row = Validation(
                batch_id=batch_id,
                suite=suite,
                success=success,
                policy=policy,
                outcome=outcome,
                evaluated=evaluated,
                failures=failures,
                docs_path=docs_path,
            )
            s.add(row)
            batch.status = outcome
            if batch_path is not None:
                batch.path = batch_path
            s.flush()
            return _validation(row)

    def latest_validation(self, batch_id: str) -> ValidationRecord | None:
        q = (
            select(Validation)
            .where(Validation.batch_id == batch_id)
            .order_by(Validation.id.desc())
            .limit(1)
        )
        with self._tx() as s:
            row = s.scalars(q).first()
            return _validation(row) if row else None

    def list_validations(self, batch_id: str | None = None) -> list[ValidationRecord]:
        q = select(Validation).order_by(Validation.id)
        if batch_id:
            q = q.where(Validation.batch_id == batch_id)
        with self._tx() as s:
            return [_validation(v) for v in s.scalars(q)]

    def trainable_batches(self, dataset: str) -> list[BatchRecord]:
        """Batches whose latest validation passed or warned: the only ones training may take."""
        return self.list_batches(dataset=dataset, status=TRAINABLE_OUTCOMES)

    # -- training runs ----------------------------------------------------------------------

    def start_run(
        self,
        *,
        dataset: str,
        params: dict[str, Any],
        batch_ids: list[str],
        git_commit: str | None = None,
    ) -> RunRecord:
        with self._tx() as s:
            row = TrainingRun(
                dataset=dataset, params=params, batch_ids=batch_ids, git_commit=git_commit
            )
            s.add(row)
            s.flush()
            return _run(row)

    def finish_run(
        self,
        run_id: int,
        *,
        status: str,
        metrics: dict[str, Any] | None = None,
        device: str | None = None,
        duration_s: float | None = None,
        dvc_lock_hash: str | None = None,
        error: str | None = None,
    ) -> RunRecord:
        with self._tx() as s:
            row = s.get(TrainingRun, run_id)
            if row is None:
                raise NotFoundError(f"no training run {run_id}")
            row.status, row.metrics, row.device = status, metrics or {}, device
            row.duration_s, row.dvc_lock_hash, row.error = duration_s, dvc_lock_hash, error
            row.finished_at = func.now()
            s.flush()
            s.refresh(row)
            return _run(row)

    def get_run(self, run_id: int) -> RunRecord:
        with self._tx() as s:
            row = s.get(TrainingRun, run_id)
            if row is None:
                raise NotFoundError(f"no training run {run_id}")
            return _run(row)

    # -- model versions ---------------------------------------------------------------------

    def register_model(
        self,
        *,
        name: str,
        dataset: str,
        path: str,
        runtime: str = "torch",
        metrics: dict[str, Any] | None = None,
        lineage: dict[str, Any] | None = None,
        batch_ids: Sequence[str] = (),
        run_id: int | None = None,
        parent_id: int | None = None,
        method: dict[str, Any] | None = None,
        stage: str = "candidate",
        decision: dict[str, Any] | None = None,
    ) -> ModelRecord:
        """Register a new version of model `name` (versions count up from 1 per name)."""
        if stage not in STAGES:
            raise MlopsError(f"unknown stage {stage!r} (one of {', '.join(STAGES)})")
        for attempt in range(_RETRIES):
            try:
                return self._insert_model_version(
                    name=name,
                    dataset=dataset,
                    path=path,
                    runtime=runtime,
                    metrics=metrics,
                    lineage=lineage,
                    batch_ids=batch_ids,
                    run_id=run_id,
                    parent_id=parent_id,
                    method=method,
                    stage=stage,
                    decision=decision,
                )
            except IntegrityError:
                # Two registrations of one name took the same next version number; the
                # unique (name, version) constraint refused the later one: number it again.
                if attempt == _RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def _insert_model_version(
        self, *, batch_ids: Sequence[str], stage: str, name: str, **values: Any
    ) -> ModelRecord:
        with self._tx() as s:
            self._lock_name(s, name)
            last = s.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.name == name))
            for key in ("metrics", "lineage", "method", "decision"):
                values[key] = values[key] or {}
            row = ModelVersion(name=name, version=(last or 0) + 1, stage=stage, **values)
            s.add(row)
            s.flush()
            for bid in sorted(set(batch_ids)):
                s.add(ModelVersionBatch(model_version_id=row.id, batch_id=bid))
            s.add(
                StageEvent(
                    model_version_id=row.id,
                    from_stage=None,
                    to_stage=stage,
                    action="register",
                    reason="registered",
                )
            )
            s.flush()
            s.refresh(row)
            return _model(row)

    @staticmethod
    def _lock_name(s: Session, name: str) -> None:
        """Serialise writers of one model name until the transaction ends. On PostgreSQL an
        advisory lock (there may be no row to lock yet: the first version); SQLite's
        BEGIN IMMEDIATE already holds the database's write lock."""
        if s.get_bind().dialect.name == "postgresql":
            s.execute(
                text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"model:{name}"}
            )

    def _resolve(self, s: Session, ref: str | int) -> ModelVersion:
        """`ref` is an id, `name:version`, `name@stage` or, for a single model name, `version`."""
        row: ModelVersion | None = None
        text = str(ref).strip()
        if isinstance(ref, int):
            row = s.get(ModelVersion, ref)
        elif "@" in text:
            name, stage = text.split("@", 1)
            row = s.scalars(
                select(ModelVersion)
                .where(ModelVersion.name == name, ModelVersion.stage == stage)
                .order_by(ModelVersion.version.desc())
            ).first()
        elif ":" in text:
            name, _, ver = text.partition(":")
            if ver.isdigit():
                row = s.scalars(
                    select(ModelVersion).where(
                        ModelVersion.name == name, ModelVersion.version == int(ver)
                    )
                ).first()
        elif text.isdigit():
            names = s.scalars(select(ModelVersion.name).distinct()).all()
            if len(names) == 1:
                row = s.scalars(
                    select(ModelVersion).where(
                        ModelVersion.name == names[0], ModelVersion.version == int(text)
                    )
                ).first()
            elif len(names) > 1:
                raise MlopsError(
                    f"model version {text!r} is ambiguous: say NAME:{text} "
                    f"(names: {', '.join(sorted(names))})"
                )
        if row is None:
            raise NotFoundError(f"no model version {text!r} (see `mlops models list`)")
        return row

    def get_model(self, ref: str | int) -> ModelRecord:
        with self._tx() as s:
            return _model(self._resolve(s, ref))

    def list_models(self, name: str | None = None, stage: str | None = None) -> list[ModelRecord]:
        q = select(ModelVersion).order_by(ModelVersion.name, ModelVersion.version)
        if name:
            q = q.where(ModelVersion.name == name)
        if stage:
            q = q.where(ModelVersion.stage == stage)
        with self._tx() as s:
            return [_model(m) for m in s.scalars(q)]

    def production_model(self, name: str) -> ModelRecord | None:
        models = self.list_models(name=name, stage="production")
        return models[-1] if models else None

    def set_stage(
        self,
        ref: str | int,
        stage: str,
        *,
        action: str,
        reason: str = "",
        actor: str = "",
        decision: dict[str, Any] | None = None,
    ) -> ModelRecord:
        """Move a model version to `stage` by `action`, if the transition rules allow it (see
        TRANSITIONS), in one transaction with its audit row. Promoting to production archives
        the previous production version. An override needs a reason and is recorded as one."""
        if stage not in STAGES:
            raise MlopsError(f"unknown stage {stage!r} (one of {', '.join(STAGES)})")
        if action not in TRANSITIONS:
            raise MlopsError(f"unknown stage action {action!r} (one of {', '.join(TRANSITIONS)})")
        if action == "override" and not reason.strip():
            raise MlopsError("an override needs a reason (--reason TEXT): it is kept on record")
        with self._tx() as s:
            row = self._resolve(s, ref)
            # Every change to a model name's stages holds the name's lock: two promotions at
            # once queue instead of both ending in production, and the stage checked below is
            # the stage as it is now, not as it was read.
            self._lock_name(s, row.name)
            s.refresh(row)
            if row.stage == stage:
                raise MlopsError(f"{row.name}:{row.version} is already {stage}")
            if (row.stage, stage) not in TRANSITIONS[action]:
                raise MlopsError(_refusal(f"{row.name}:{row.version}", row.stage, stage, action))
            if stage == "production":
                current = s.scalars(
                    select(ModelVersion).where(
                        ModelVersion.name == row.name,
                        ModelVersion.stage == "production",
                        ModelVersion.id != row.id,
                    )
                ).all()
                for old in current:
                    s.add(
                        StageEvent(
                            model_version_id=old.id,
                            from_stage=old.stage,
                            to_stage="archived",
                            action="archive",
                            reason=f"replaced by {row.name}:{row.version}",
                            actor=actor,
                        )
                    )
                    old.stage = "archived"
            s.add(
                StageEvent(
                    model_version_id=row.id,
                    from_stage=row.stage,
                    to_stage=stage,
                    action=action,
                    reason=reason,
                    actor=actor,
                )
            )
            row.stage = stage
            if decision is not None:
                row.decision = decision
            if stage == "production":
                self._deploy(s, row.name, action, row.id, actor=actor, reason=reason)
                self._drop_alias_of(s, row.name, "staging", row.id, actor)
            elif stage == "staging":
                self._set_alias(s, row.name, "staging", row.id, actor)
            else:
                self._drop_alias_of(s, row.name, "staging", row.id, actor)
            s.flush()
            s.refresh(row)
            return _model(row)

    def _drop_alias_of(
        self, s: Session, name: str, alias: str, version_id: int, actor: str
    ) -> None:
        """Remove `alias` if it points at this version (a staged version promoted or retired)."""
        row = s.scalars(
            select(ModelAlias).where(ModelAlias.model_name == name, ModelAlias.alias == alias)
        ).first()
        if row is not None and row.model_version_id == version_id:
            s.delete(row)

    def rollback(self, name: str, *, reason: str = "rollback", actor: str = "") -> ModelRecord:
        """Archive the production version of `name` and put back the one production had before
        it (the version most recently moved out of production), in one transaction."""
        with self._tx() as s:
            self._lock_name(s, name)
            current = s.scalars(
                select(ModelVersion).where(
                    ModelVersion.name == name, ModelVersion.stage == "production"
                )
            ).all()
            left = s.execute(
                select(StageEvent.model_version_id)
                .join(ModelVersion, ModelVersion.id == StageEvent.model_version_id)
                .where(
                    ModelVersion.name == name,
                    ModelVersion.stage == "archived",
                    StageEvent.from_stage == "production",
                )
                .order_by(StageEvent.id.desc())
            ).first()
            if left is None:
                raise MlopsError(f"{name} has no previous production version to roll back to")
            previous = s.get(ModelVersion, left[0])
            assert previous is not None
            for row, to in [*((m, "archived") for m in current), (previous, "production")]:
                s.add(
                    StageEvent(
                        model_version_id=row.id,
                        from_stage=row.stage,
                        to_stage=to,
                        action="rollback",
                        reason=reason,
                        actor=actor,
                    )
                )
                row.stage = to
            self._deploy(s, name, "rollback", previous.id, actor=actor, reason=reason)
            s.flush()
            s.refresh(previous)
            return _model(previous)

    def record_decision(self, ref: str | int, decision: dict[str, Any]) -> ModelRecord:
        """Keep a gate decision that moves nothing (an inconclusive one)."""
        with self._tx() as s:
            row = self._resolve(s, ref)
            row.decision = decision
            s.flush()
            s.refresh(row)
            return _model(row)

    def stage_history(self, ref: str | int) -> list[StageEventRecord]:
        with self._tx() as s:
            row = self._resolve(s, ref)
            q = select(StageEvent).where(StageEvent.model_version_id == row.id)
            return [_to(StageEventRecord, e) for e in s.scalars(q.order_by(StageEvent.id))]

    # -- aliases and deployment state -------------------------------------------------------

    def _set_alias(
        self, s: Session, name: str, alias: str, version_id: int | None, actor: str
    ) -> None:
        if alias not in ALIASES:
            raise MlopsError(f"unknown alias {alias!r} (one of {', '.join(ALIASES)})")
        row = s.scalars(
            select(ModelAlias).where(ModelAlias.model_name == name, ModelAlias.alias == alias)
        ).first()
        if version_id is None:
            if row is not None:
                s.delete(row)
            return
        if row is None:
            s.add(
                ModelAlias(
                    model_name=name, alias=alias, model_version_id=version_id, updated_by=actor
                )
            )
        else:
            row.model_version_id, row.updated_at, row.updated_by = version_id, utcnow(), actor

    def _deploy(
        self,
        s: Session,
        name: str,
        action: str,
        version_id: int | None,
        *,
        share: float | None = None,
        clear: str | None = None,
        actor: str = "",
        reason: str = "",
    ) -> DeploymentState:
        """Change a name's deployment state, its aliases and its audit, in the caller's
        transaction (which holds the name's lock)."""
        if action not in DEPLOY_ACTIONS:
            raise MlopsError(f"unknown deployment action {action!r}")
        state = s.get(DeploymentState, name)
        if state is None:
            state = DeploymentState(model_name=name, canary_share=0.0, revision=0)
            s.add(state)
        if action in ("promote", "override", "rollback"):
            state.production_version_id = version_id
            self._set_alias(s, name, "production", version_id, actor)
            if state.canary_version_id == version_id:  # a canary promoted is no canary
                state.canary_version_id, state.canary_share = None, 0.0
                self._set_alias(s, name, "canary", None, actor)
            if state.shadow_version_id == version_id:
                state.shadow_version_id = None
                self._set_alias(s, name, "shadow", None, actor)
        elif action == "canary":
            state.canary_version_id, state.canary_share = version_id, float(share or 0.0)
            self._set_alias(s, name, "canary", version_id, actor)
        elif action == "shadow":
            state.shadow_version_id = version_id
            self._set_alias(s, name, "shadow", version_id, actor)
        elif clear == "canary":
            state.canary_version_id, state.canary_share = None, 0.0
            self._set_alias(s, name, "canary", None, actor)
        else:
            state.shadow_version_id = None
            self._set_alias(s, name, "shadow", None, actor)
        state.revision = (state.revision or 0) + 1
        state.updated_at, state.updated_by = utcnow(), actor
        s.add(
            DeploymentEvent(
                model_name=name,
                action=action,
                model_version_id=version_id,
                share=share,
                revision=state.revision,
                actor=actor,
                reason=reason,
            )
        )
        s.flush()
        return state

    def set_canary(
        self, ref: str | int, share: float, *, actor: str = "", reason: str = ""
    ) -> DeploymentStateRecord:
        """Send `share` of traffic (0 < share < 1) to a staged or production version."""
        if not 0.0 < share < 1.0:
            raise MlopsError(f"a canary share is between 0 and 1 (exclusive), got {share}")
        with self._tx() as s:
            row = self._resolve(s, ref)
            self._lock_name(s, row.name)
            s.refresh(row)
            if row.stage not in ("staging", "production"):
                raise MlopsError(
                    f"{row.name}:{row.version} is {row.stage}: only a version the gate staged "
                    "takes canary traffic"
                )
            why = reason or f"canary {share:g}"
            state = self._deploy(
                s, row.name, "canary", row.id, share=share, actor=actor, reason=why
            )
            return _state(state)

    def set_shadow(
        self, ref: str | int, *, actor: str = "", reason: str = ""
    ) -> DeploymentStateRecord:
        """Give a version a copy of every request (its answers are logged, never returned)."""
        with self._tx() as s:
            row = self._resolve(s, ref)
            self._lock_name(s, row.name)
            s.refresh(row)
            if row.stage == "rejected":
                raise MlopsError(f"{row.name}:{row.version} was rejected: it cannot shadow")
            state = self._deploy(
                s, row.name, "shadow", row.id, actor=actor, reason=reason or "shadow"
            )
            return _state(state)

    def clear_deployment(
        self, name: str, what: str, *, actor: str = "", reason: str = ""
    ) -> DeploymentStateRecord:
        """Stop the canary or the shadow of model `name` (`reason` kept in the audit)."""
        if what not in ("canary", "shadow"):
            raise MlopsError(f"clear takes canary or shadow, not {what!r}")
        with self._tx() as s:
            self._lock_name(s, name)
            return _state(
                self._deploy(
                    s,
                    name,
                    "clear",
                    None,
                    clear=what,
                    actor=actor,
                    reason=reason or f"{what} cleared",
                )
            )

    def deployment_state(self, name: str) -> DeploymentStateRecord | None:
        with self._tx() as s:
            row = s.get(DeploymentState, name)
            return _state(row) if row is not None else None

    def deployment_revision(self, name: str) -> int:
        """The revision counter alone: a cheap primary-key read for servers that poll."""
        with self._tx() as s:
            value = s.scalar(
                select(DeploymentState.revision).where(DeploymentState.model_name == name)
            )
            return int(value or 0)

    def list_deployment_states(self) -> list[DeploymentStateRecord]:
        with self._tx() as s:
            return [
                _state(r)
                for r in s.scalars(select(DeploymentState).order_by(DeploymentState.model_name))
            ]

    def list_aliases(self, name: str | None = None) -> list[AliasRecord]:
        q = (
            select(ModelAlias, ModelVersion.version)
            .join(ModelVersion, ModelVersion.id == ModelAlias.model_version_id)
            .order_by(ModelAlias.model_name, ModelAlias.alias)
        )
        if name:
            q = q.where(ModelAlias.model_name == name)
        with self._tx() as s:
            return [_to(AliasRecord, a, version=v) for a, v in s.execute(q)]

    def deployment_events(self, name: str | None = None) -> list[DeploymentEventRecord]:
        q = select(DeploymentEvent).order_by(DeploymentEvent.id)
        if name:
            q = q.where(DeploymentEvent.model_name == name)
        with self._tx() as s:
            return [_to(DeploymentEventRecord, e) for e in s.scalars(q)]

    # -- deployments and drift --------------------------------------------------------------

    def add_deployment(
        self,
        ref: str | int,
        *,
        action: str,
        traffic: float = 1.0,
        environment: str = "default",
        actor: str = "",
        note: str = "",
    ) -> DeploymentRecord:
        if not 0.0 <= traffic <= 1.0:
            raise MlopsError(f"traffic share must be within 0..1, got {traffic}")
        with self._tx() as s:
            mv = self._resolve(s, ref)
            row = Deployment(
                model_version_id=mv.id,
                environment=environment,
                action=action,
                traffic=traffic,
                actor=actor,
                note=note,
            )
            s.add(row)
            s.flush()
            return _to(DeploymentRecord, row)

    def list_deployments(self, environment: str | None = None) -> list[DeploymentRecord]:
        q = select(Deployment).order_by(Deployment.id)
        if environment:
            q = q.where(Deployment.environment == environment)
        with self._tx() as s:
            return [_to(DeploymentRecord, d) for d in s.scalars(q)]

    def add_drift_report(
        self,
        *,
        model_version_id: int | None,
        reference: str,
        rows: int,
        drift_share: float,
        drifted: bool,
        details: dict[str, Any],
        path: str | None,
        model_name: str | None = None,
        window_start: datetime | None = None,
        window_end: datetime | None = None,
        estimated: dict[str, Any] | None = None,
        realized: dict[str, Any] | None = None,
        alerts: list[Any] | None = None,
        json_path: str | None = None,
    ) -> DriftRecord:
        with self._tx() as s:
            row = DriftReport(
                model_version_id=model_version_id,
                reference=reference,
                rows=rows,
                drift_share=drift_share,
                drifted=drifted,
                details=details,
                path=path,
                model_name=model_name,
                window_start=window_start,
                window_end=window_end,
                estimated=estimated or {},
                realized=realized or {},
                alerts=alerts or [],
                json_path=json_path,
            )
            s.add(row)
            s.flush()
            return _to(DriftRecord, row)

    def set_drift_alerts(self, report_id: int, alerts: list[Any]) -> DriftRecord:
        """What the monitor sent for a report (recorded after sending, so a failed send shows)."""
        with self._tx() as s:
            row = s.get(DriftReport, report_id)
            if row is None:
                raise MlopsError(f"no drift report {report_id}")
            row.alerts = list(alerts)
            s.flush()
            return _to(DriftRecord, row)

    def get_drift_report(self, report_id: int) -> DriftRecord:
        with self._tx() as s:
            row = s.get(DriftReport, report_id)
            if row is None:
                raise MlopsError(f"no drift report {report_id} (see `mlops drift list`)")
            return _to(DriftRecord, row)

    def list_drift_reports(
        self, name: str | None = None, *, limit: int | None = None
    ) -> list[DriftRecord]:
        """Reports oldest first; with `limit`, the newest `limit` of them."""
        q = select(DriftReport).order_by(DriftReport.id.desc())
        if name:
            q = q.where(DriftReport.model_name == name)
        if limit:
            q = q.limit(limit)
        with self._tx() as s:
            return [_to(DriftRecord, r) for r in s.scalars(q)][::-1]

    def record_drift_event(
        self,
        name: str,
        *,
        drift_report_id: int | None,
        cooldown_s: float,
        max_retrains: int,
        window_s: float,
    ) -> DriftEventRecord:
        """Record a drift alert and decide, in the same transaction, what it causes: a retrain,
        unless one was decided within `cooldown_s` (debounce) or `max_retrains` were decided
        within `window_s` (a cap on a drift storm). Concurrent callers queue on the name's
        lock, so two alerts at once never both start a retrain."""
        from datetime import timedelta

        with self._tx() as s:
            self._lock_name(s, f"drift:{name}")
            now = utcnow()
            retrains = list(
                s.scalars(
                    select(DriftEvent)
                    .where(DriftEvent.model_name == name, DriftEvent.decision == "retrain")
                    .order_by(DriftEvent.id.desc())
                    .limit(max_retrains + 1)  # the cap needs no more; the cooldown the newest
                )
            )[::-1]
            recent = [
                e for e in retrains if _aware(e.created_at) >= now - timedelta(seconds=cooldown_s)
            ]
            in_window = [
                e for e in retrains if _aware(e.created_at) >= now - timedelta(seconds=window_s)
            ]
            if recent:
                decision = "suppressed"
                reason = (
                    f"cooldown: drift event {recent[-1].id} started a retrain "
                    f"{(now - _aware(recent[-1].created_at)).total_seconds():.0f} s ago "
                    f"(loop.cooldown_s={cooldown_s:g})"
                )
            elif len(in_window) >= max_retrains:
                decision = "suppressed"
                reason = (
                    f"cap: {len(in_window)} retrains within {window_s:g} s "
                    f"(loop.max_retrains={max_retrains})"
                )
            else:
                decision, reason = "retrain", "no retrain in the cooldown, under the cap"
            row = DriftEvent(
                model_name=name,
                drift_report_id=drift_report_id,
                decision=decision,
                reason=reason,
                created_at=now,
            )
            s.add(row)
            s.flush()
            return _to(DriftEventRecord, row)

    def claim_drift_event(
        self, name: str, flow_run_id: str, *, event_id: int | None = None
    ) -> DriftEventRecord | None:
        """Drift event `event_id` (the one whose Prefect event started the run), claimed by
        `flow_run_id` if no run claimed it yet; None for a run no drift event started."""
        if event_id is None:
            return None
        with self._tx() as s:
            row = s.scalars(
                select(DriftEvent)
                .where(
                    DriftEvent.id == event_id,
                    DriftEvent.model_name == name,
                    DriftEvent.decision == "retrain",
                    DriftEvent.flow_run_id.is_(None),
                )
                .with_for_update()
            ).first()
            if row is None:
                return None
            row.flow_run_id = flow_run_id
            s.flush()
            return _to(DriftEventRecord, row)

    def list_drift_events(self, name: str | None = None) -> list[DriftEventRecord]:
        q = select(DriftEvent).order_by(DriftEvent.id)
        if name:
            q = q.where(DriftEvent.model_name == name)
        with self._tx() as s:
            return [_to(DriftEventRecord, r) for r in s.scalars(q)]

    # -- serving: packages, server reports, reviews, labels -----------------------------------

    def record_serving_event(
        self, name: str, action: str, ref: str | int | None, *, reason: str, actor: str = ""
    ) -> DeploymentEventRecord:
        """A server's report on the deployment state (a version it refused to swap in), kept in
        the deployment audit; the state and its revision stay as they are."""
        if action not in SERVING_ACTIONS:
            raise MlopsError(f"unknown serving action {action!r} (one of {SERVING_ACTIONS})")
        with self._tx() as s:
            version_id = self._resolve(s, ref).id if ref is not None else None
            revision = s.scalar(
                select(DeploymentState.revision).where(DeploymentState.model_name == name)
            )
            row = DeploymentEvent(
                model_name=name,
                action=action,
                model_version_id=version_id,
                revision=int(revision or 0),
                actor=actor,
                reason=reason,
            )
            s.add(row)
            s.flush()
            return _to(DeploymentEventRecord, row)

    def add_package(self, ref: str | int, *, model_tag: str, bento_tag: str) -> PackageRecord:
        """Record (or update) where a version is packaged: its BentoML model tag and bento."""
        with self._tx() as s:
            mv = self._resolve(s, ref)
            row = s.get(Package, mv.id)
            if row is None:
                row = Package(model_version_id=mv.id, model_tag=model_tag, bento_tag=bento_tag)
                s.add(row)
            else:
                row.model_tag, row.bento_tag = model_tag, bento_tag
            s.flush()
            return _to(PackageRecord, row)

    def get_package(self, ref: str | int) -> PackageRecord | None:
        with self._tx() as s:
            row = s.get(Package, self._resolve(s, ref).id)
            return _to(PackageRecord, row) if row is not None else None

    def add_reviews(self, items: Sequence[dict[str, Any]]) -> int:
        """Queue disagreements for review; each item has the Review columns (model_name,
        request_id, record, route, production_version_id, other_version_id, inputs,
        production_output, other_output). Returns how many were queued."""
        if not items:
            return 0
        with self._tx() as s:
            s.add_all(Review(**item) for item in items)
        return len(items)

    def list_reviews(
        self,
        name: str | None = None,
        *,
        status: str | None = "open",
        limit: int | None = None,
        request_ids: Sequence[str] | None = None,
    ) -> list[ReviewRecord]:
        """Reviews oldest first (the queue's order), optionally only those of some requests."""
        q = select(Review).order_by(Review.id)
        if name:
            q = q.where(Review.model_name == name)
        if request_ids:
            q = q.where(Review.request_id.in_(list(request_ids)))
        if status:
            q = q.where(Review.status == status)
        if limit:
            q = q.limit(limit)
        with self._tx() as s:
            return [_to(ReviewRecord, r) for r in s.scalars(q)]

    def resolve_review(self, review_id: int, label: str, *, actor: str = "") -> LabelRecord:
        """Close a review with an engineer's decision, stored as the record's label, in one
        transaction."""
        with self._tx() as s:
            review = s.get(Review, review_id)
            if review is None:
                raise NotFoundError(f"no review {review_id}")
            if review.status != "open":
                raise MlopsError(f"review {review_id} is already {review.status}")
            review.status, review.resolved_at, review.resolved_by = "resolved", utcnow(), actor
            return self._put_label(
                s, review.model_name, review.request_id, review.record, label, "review", actor
            )

    def add_label(
        self, name: str, request_id: str, record: int, value: str, *, source: str, actor: str = ""
    ) -> LabelRecord:
        """A ground-truth label for one served record; a later label replaces an earlier one."""
        with self._tx() as s:
            return self._put_label(s, name, request_id, record, value, source, actor)

    @staticmethod
    def _put_label(
        s: Session, name: str, request_id: str, record: int, value: str, source: str, actor: str
    ) -> LabelRecord:
        row = s.scalars(
            select(Label).where(Label.request_id == request_id, Label.record == record)
        ).first()
        if row is None:
            row = Label(model_name=name, request_id=request_id, record=record)
            s.add(row)
        row.value, row.source, row.actor, row.created_at = str(value), source, actor, utcnow()
        s.flush()
        return _to(LabelRecord, row)

    def add_labels(
        self, name: str, labels: Sequence[tuple[str, int, str]], *, source: str, actor: str = ""
    ) -> int:
        """Ground truth for many served records (request id, record, value) in one transaction;
        a record's later label replaces its earlier one. Returns how many were stored."""
        if not labels:
            return 0
        latest = {(str(r), int(i)): str(v) for r, i, v in labels}
        now = utcnow()
        with self._tx() as s:
            ids = sorted({r for r, _ in latest})
            for start in range(0, len(ids), 500):  # bound the IN list
                chunk = ids[start : start + 500]
                found = select(Label).where(Label.model_name == name, Label.request_id.in_(chunk))
                for row in s.scalars(found):
                    key = (row.request_id, row.record)
                    if key in latest:
                        s.delete(row)
            s.flush()
            s.add_all(
                Label(
                    model_name=name,
                    request_id=r,
                    record=i,
                    value=v,
                    source=source,
                    actor=actor,
                    created_at=now,
                )
                for (r, i), v in latest.items()
            )
            s.flush()
        return len(latest)

    def list_labels(self, name: str | None = None) -> list[LabelRecord]:
        q = select(Label).order_by(Label.id)
        if name:
            q = q.where(Label.model_name == name)
        with self._tx() as s:
            return [_to(LabelRecord, r) for r in s.scalars(q)]


def _aware(when: datetime) -> datetime:
    """SQLite returns naive times (stored as UTC); PostgreSQL aware ones."""
    from datetime import UTC

    return when if when.tzinfo else when.replace(tzinfo=UTC)
