"""The BentoML service: `mlops serve` runs it with `bentoml serve serving.service:MlopsService`.

Which model it serves comes from the environment `mlops serve` sets (MLOPS_WORKSPACE,
MLOPS_HOME, MLOPS_DATABASE_URL, MLOPS_SERVE_MODEL); its request type is generated from that
model's manifest when this module is imported, and what answers is whatever the registry's
deployment state says, re-read every `serve.poll_s` seconds by each worker (see serving/host).
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, cast

import bentoml
import numpy as np
import orjson
from bentoml.exceptions import BentoMLException, InvalidArgument
from pydantic import BaseModel, Field, ValidationError
from starlette.responses import Response

from mlops.errors import MlopsError
from mlops.params import ServeParams, load_params
from mlops.predictions import FAILED_CANARY, Answered, PredictionLog
from mlops.settings import Workspace, configure_environment, get_workspace
from mlops.store import ModelRecord, Store
from pipelines.artifact import InputError, model_folder, read_manifest
from serving import ENV_ADMIN_TOKEN, ENV_MODEL, ENV_VERSION, ENV_WORKERS
from serving.batcher import Batcher
from serving.guard import BodyGuard, replace_bentoml_timeout
from serving.host import Loaded, ModelHost, Routes, SwapReport, disagreements
from serving.schema import InputSchema, PredictResponse, input_schema

log = logging.getLogger("mlops.serving")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


class _ClientErrors(logging.Filter):
    """BentoML logs every refused request as an ERROR with a traceback: a client's mistake is
    not a server error, and a fuzzer or a bad client would flood the log. Count them instead."""

    def __init__(self, count: Any) -> None:
        super().__init__()
        self.count = count

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        client = isinstance(exc, ValidationError) or (
            isinstance(exc, BentoMLException) and exc.error_code.value < 500
        )
        if client:
            self.count()
        return not client


@dataclass(frozen=True)
class Setup:
    """What this server serves, worked out once per process when the module is imported."""

    ws: Workspace
    name: str
    serve: ServeParams
    schema: InputSchema
    schema_from: str  # the version whose manifest gave the request type


def _setup() -> Setup:
    ws = get_workspace()
    configure_environment(ws)
    serve = load_params(ws.params_path).serve if ws.params_path.is_file() else ServeParams()
    if os.environ.get(ENV_WORKERS):
        serve = serve.model_copy(update={"workers": int(os.environ[ENV_WORKERS])})
    with Store.open(ws.database_url, migrate=False) as store:
        name = os.environ.get(ENV_MODEL) or _only_model(store)
        source = _schema_version(store, name)
        manifest = read_manifest(model_folder(ws.version_dir(source.path)))
    if "schema" not in manifest:
        raise MlopsError(f"{source.name}:{source.version} has no input schema (retrain it)")
    return Setup(
        ws, name, serve, input_schema(manifest["schema"]),
        f"{source.name}:{source.version}",
    )  # fmt: skip


def _only_model(store: Store) -> str:
    names = sorted({m.name for m in store.list_models()})
    if len(names) != 1:
        raise MlopsError(
            f"set {ENV_MODEL} to the model to serve (this store has {names or 'no models'})"
        )
    return names[0]


def _schema_version(store: Store, name: str) -> ModelRecord:
    """The version whose schema the server takes: production's, else the newest staged one."""
    if os.environ.get(ENV_VERSION):  # `mlops package` building a bento for this version
        return store.get_model(f"{name}:{os.environ[ENV_VERSION]}")
    state = store.deployment_state(name)
    if state and state.production_version_id:
        return store.get_model(state.production_version_id)
    for stage in ("staging", None):
        found = store.list_models(name, stage=stage)
        if found:
            return max(found, key=lambda m: m.version)
    raise MlopsError(f"no model named {name!r} in the store")


SETUP = _setup()
replace_bentoml_timeout()  # before BentoML builds the app (serving/guard.py says why)
Record = SETUP.schema.record
Records = Annotated[
    list[Record],  # type: ignore[valid-type]
    Field(min_length=1, max_length=SETUP.serve.max_records, description="the records to score"),
]


class _Metrics:
    """Our Prometheus series, created after BentoML has set up multiprocess collection."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.requests = Counter(
            "mlops_requests", "Answered requests", ["model", "version", "route"]
        )
        self.records = Counter("mlops_records", "Answered records", ["model", "version", "route"])
        self.rejected = Counter("mlops_rejected_requests", "Requests refused with a 4xx", ["model"])
        self.latency = Histogram(
            "mlops_request_seconds",
            "Time to answer a request, after parsing",
            ["model", "version"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        self.disagreements = Counter(
            "mlops_disagreements",
            "Records where a canary or shadow version and production disagreed",
            ["model", "version", "route"],
        )
        self.swaps = Counter("mlops_swaps", "Model swaps by outcome", ["model", "outcome"])
        self.errors = Counter(
            "mlops_errors",
            "Requests a version failed (a canary's are answered by production)",
            ["model", "version", "route"],
        )
        self.canary_share = Gauge(
            "mlops_canary_share", "Canary share in force", ["model"], multiprocess_mode="max"
        )
        self.log_rows = Counter(
            "mlops_prediction_log_rows", "Prediction log rows by write outcome", ["outcome"]
        )


_METRICS: _Metrics | None = None


def _metrics() -> _Metrics:
    global _METRICS
    if _METRICS is None:
        _METRICS = _Metrics()
    return _METRICS


@bentoml.service(
    name="mlops",
    workers=SETUP.serve.workers,
    # The defaults cost most of the throughput on a small model (STACK.md, BENCHMARKS.md).
    logging={"access": {"enabled": False}},
    # Sampling 0 still builds the spans; excluding the routes skips the work (BENCHMARKS.md).
    tracing={"sample_rate": 0.0, "excluded_urls": ["/predict", "/admin/reload"]},
    traffic={"timeout": 30},
)
class MlopsService:
    def __init__(self) -> None:
        self.metrics = _metrics()
        logging.getLogger("bentoml._internal.server.http_app").addFilter(
            _ClientErrors(self.metrics.rejected.labels(SETUP.name).inc)
        )
        self.store = Store.open(SETUP.ws.database_url, migrate=False)
        self.worker = f"worker-{os.getpid()}"
        self.plog = PredictionLog(
            SETUP.ws.predictions_dir,
            flush_s=SETUP.serve.log_flush_s,
            flush_rows=SETUP.serve.log_flush_rows,
            on_flush=self._log_flushed,
        ).start()
        self.batcher = Batcher(SETUP.serve.max_batch_records)
        self.reviews: list[dict[str, Any]] = []
        self._reviews_lock = threading.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._children: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        self.host = ModelHost(
            self.store,
            SETUP.name,
            SETUP.schema,
            resolve_path=self._model_path,
            on_swap=self._swapped,
            worker=self.worker,
        )
        try:
            self.host.refresh()
        except Exception:
            log.exception("first deployment read failed; /readyz stays false until one works")
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="deployment-poll", daemon=True)
        self._poller.start()
        # Everything loaded so far lives as long as the worker: keep it out of the collector's
        # full passes, which otherwise paused a loaded worker for 100-300 ms (BENCHMARKS.md).
        gc.collect()
        gc.freeze()

    # -- health -------------------------------------------------------------------------

    def __is_ready__(self) -> bool:
        return self.host.ready

    @bentoml.on_shutdown
    def _shutdown(self) -> None:
        self._stop.set()
        self.plog.close()
        self._flush_reviews()
        self.batcher.close()
        self.store.close()

    # -- the API ------------------------------------------------------------------------

    # The response is written here (`Answer.json`), not by pydantic: building a Prediction per
    # record cost more than the model (BENCHMARKS.md). `output_spec` keeps it documented.
    @bentoml.api(route="/predict", output_spec=PredictResponse)
    async def predict(self, records: Records, ctx: bentoml.Context) -> Response:
        """Score records: each field is a column of the data set, named as it is there."""
        started = time.perf_counter()
        request_id = _request_id(ctx)
        ctx.response.headers["X-Request-ID"] = request_id
        routes = self.host.routes  # taken once: this request finishes on these versions
        model, route = routes.pick(ctx.request.headers.get("x-client-id") or request_id)
        if model is None:  # a 503 that says why (BentoML words every 5xx it raises alike)
            ctx.response.status_code = 503
            why = f"no production version of {SETUP.name} is loaded yet (see `mlops status`)"
            return Response(orjson.dumps({"error": why}), media_type="application/json")
        columns = SETUP.schema.columns_of(cast(list[BaseModel], records))
        n = len(records)
        try:
            x, readings = _encode(model, columns, n)
            scores = await self.batcher.scores(model, x)
        except InvalidArgument:
            raise  # the client's input: a 4xx whoever answers, not the canary's failure
        except Exception:
            if route != "canary" or routes.production is None:
                raise
            # A canary that fails must not fail the client: production answers, and the
            # failure is counted and logged (route "canary-error") for the rollout to weigh.
            log.exception("canary %s failed; production answers request %s", model.ref, request_id)
            self.metrics.errors.labels(SETUP.name, model.ref, route).inc()
            self.plog.append(_failed_rows(request_id, model, n, time.perf_counter() - started))
            model, route = routes.production, "production"
            x, readings = _encode(model, columns, n)
            scores = await self.batcher.scores(model, x)
        answer = Answer.of(model, scores)
        body = answer.json(request_id)
        elapsed = time.perf_counter() - started
        requests, counted, latency = self._series(model.ref, route)
        requests.inc()
        counted.inc(n)
        latency.observe(elapsed)
        logged = _logged_inputs(model, columns, readings)
        self.plog.append(_log_rows(request_id, model, route, logged, answer, elapsed))
        if route == "canary" and routes.production is not None:
            self._later(
                self._compare(routes.production, model, "canary", columns, answer, request_id)
            )
        shadow = routes.shadow
        # A shadow is compared with production: requests the canary answered are left out.
        if shadow is not None and route == "production" and shadow.id != model.id:
            self._later(self._compare(model, shadow, "shadow", columns, answer, request_id))
        return Response(body, media_type="application/json")

    @bentoml.api(route="/admin/reload")
    def admin_reload(self, ctx: bentoml.Context) -> dict[str, Any]:
        """Re-read the deployment state now (this worker; the others within serve.poll_s).
        Needs `Authorization: Bearer $MLOPS_ADMIN_TOKEN`."""
        refused = _refusal(ctx)
        if refused:
            ctx.response.status_code = 401
            return {"error": refused}
        report = self.host.refresh(force=True)
        routes = self.host.routes
        return {
            "worker": self.worker,
            "revision": routes.revision,
            "serving": _describe(routes),
            "loaded": report.loaded if report else [],
            "refused": report.failed if report else {},
        }

    # -- work after the response --------------------------------------------------------

    def _later(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _compare(
        self,
        production: Loaded,
        other: Loaded,
        route: str,
        columns: dict[str, list[Any]],
        answered: Answer,
        request_id: str,
    ) -> None:
        """Score the same records with the version that did not answer; log a shadow's answers;
        queue each record where the two disagree for review."""
        try:
            silent = production if route == "canary" else other
            n = len(answered)
            x, readings = _encode(silent, columns, n)
            theirs = Answer.of(silent, await self.batcher.scores(silent, x))
            if route == "shadow":
                logged = _logged_inputs(other, columns, readings)
                self.plog.append(_log_rows(request_id, other, "shadow", logged, theirs, 0.0))
            prod, alt = (theirs, answered) if route == "canary" else (answered, theirs)
            tolerance = SETUP.serve.review_tolerance * production.predictor.preprocessor.target_std
            items = [
                {
                    "model_name": SETUP.name,
                    "request_id": request_id,
                    "record": i,
                    "route": route,
                    "production_version_id": production.id,
                    "other_version_id": other.id,
                    "inputs": {c: values[i] for c, values in columns.items()},
                    "production_output": prod.output(i),
                    "other_output": alt.output(i),
                }
                for i in disagreements(prod.labels, alt.labels, tolerance)
            ]
            if items:
                self.metrics.disagreements.labels(SETUP.name, other.ref, route).inc(len(items))
                with self._reviews_lock:
                    self.reviews.extend(items)
        except Exception:
            log.exception("comparing %s with production failed (the client was answered)", route)

    def _series(self, ref: str, route: str) -> tuple[Any, Any, Any]:
        """The Prometheus children of one (version, route): looked up once, not per request."""
        key = (ref, route)
        found = self._children.get(key)
        if found is None:
            m = self.metrics
            found = (
                m.requests.labels(SETUP.name, ref, route),
                m.records.labels(SETUP.name, ref, route),
                m.latency.labels(SETUP.name, ref),
            )
            self._children[key] = found
        return found

    def _model_path(self, record: ModelRecord) -> Path:
        """A version's files in the BentoML model store (`mlops package` put them there)."""
        package = self.store.get_package(record.id)
        if package is None:
            # Promoted with `mlops models promote` (which does not package): serve the
            # registry's folder rather than nothing; its checksums are verified all the same.
            log.warning(
                "%s is not packaged (`mlops package`): serving its registry folder", record.ref
            )
            return model_folder(SETUP.ws.version_dir(record.path))
        return Path(bentoml.models.get(package.model_tag).path)

    def _poll(self) -> None:
        while not self._stop.wait(SETUP.serve.poll_s):
            try:
                self.host.refresh()
            except Exception:
                log.exception("deployment poll failed; serving what was loaded")
            self._flush_reviews()

    def _flush_reviews(self) -> None:
        with self._reviews_lock:
            items, self.reviews = self.reviews, []
        if items:
            try:
                self.store.add_reviews(items)
            except Exception:
                log.exception("could not queue %d review(s)", len(items))

    def _swapped(self, report: SwapReport) -> None:
        m = self.metrics
        if report.loaded:
            m.swaps.labels(SETUP.name, "loaded").inc(len(report.loaded))
        if report.failed:
            m.swaps.labels(SETUP.name, "failed").inc(len(report.failed))
        m.canary_share.labels(SETUP.name).set(self.host.routes.share)

    def _log_flushed(self, rows: int, ok: bool) -> None:
        self.metrics.log_rows.labels("written" if ok else "failed").inc(rows)


def _request_id(ctx: bentoml.Context) -> str:
    given = ctx.request.headers.get("x-request-id")
    if given is None:
        return uuid.uuid4().hex
    if not _REQUEST_ID.match(given):
        raise InvalidArgument(
            "header 'X-Request-ID': 1 to 128 characters of letters, digits and ._:-"
        )
    return given


def _refusal(ctx: bentoml.Context) -> str | None:
    """Why an admin request is refused (401), or None: it carries the server's token."""
    token = os.environ.get(ENV_ADMIN_TOKEN, "")
    given = ctx.request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    if not token:
        return f"admin endpoints are off: the server was started without {ENV_ADMIN_TOKEN}"
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.encode(), token.encode()):
        return "header 'Authorization': 'Bearer <token>' with the server's admin token is required"
    return None


def _encode(model: Loaded, columns: dict[str, list[Any]], n: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        return model.predictor.preprocessor.encode_columns(columns, n, SETUP.schema.nullable)
    except InputError as exc:
        raise InvalidArgument(f"records: {exc}") from None


@dataclass(frozen=True)
class Answer:
    """One version's answers to one request's records, kept as arrays until they are written."""

    model: Loaded
    scores: np.ndarray
    labels: list[Any]  # the predicted class, or the predicted value, per record

    @classmethod
    def of(cls, model: Loaded, scores: np.ndarray) -> Answer:
        pre = model.predictor.preprocessor
        if model.predictor.config.task == "classification":
            return cls(model, scores, [pre.classes[k] for k in scores.argmax(axis=1).tolist()])
        return cls(model, scores, scores.tolist())

    def __len__(self) -> int:
        return len(self.labels)

    def outputs(self, request_id: str | None = None) -> list[dict[str, Any]]:
        """What `Prediction` documents, per record (its request id None where not given)."""
        ref = self.model.ref
        if self.model.predictor.config.task != "classification":
            return [
                {
                    "prediction": v,
                    "probability": None,
                    "probabilities": None,
                    "version": ref,
                    "request_id": request_id,
                }
                for v in self.labels
            ]
        classes = _class_names(self.model)
        best = self.scores.max(axis=1).tolist()
        return [
            {
                "prediction": label,
                "probability": top,
                "probabilities": dict(zip(classes, probs, strict=True)),
                "version": ref,
                "request_id": request_id,
            }
            for label, top, probs in zip(self.labels, best, self.scores.tolist(), strict=True)
        ]

    def output(self, i: int) -> dict[str, Any]:
        """Record i's answer, as a review shows it."""
        one = Answer(self.model, self.scores[i : i + 1], self.labels[i : i + 1]).outputs()[0]
        del one["request_id"]
        return one

    def json(self, request_id: str) -> bytes:
        """The PredictResponse body."""
        return orjson.dumps(
            {
                "predictions": self.outputs(request_id),
                "version": self.model.ref,
                "request_id": request_id,
            }
        )

    def positive_scores(self) -> np.ndarray:
        """The log's `score`: P(positive class) for a binary model, the top probability for a
        multi-class one, the value for regression."""
        pred = self.model.predictor
        if pred.config.task != "classification":
            return self.scores
        classes = _class_names(self.model)
        positive = pred.spec.positive_class
        if positive is not None and str(positive) in classes:
            return self.scores[:, classes.index(str(positive))]
        return self.scores.max(axis=1)


def _class_names(model: Loaded) -> list[str]:
    return [str(c) for c in model.predictor.preprocessor.classes]


def _logged_inputs(
    model: Loaded, columns: dict[str, list[Any]], readings: np.ndarray
) -> dict[str, Any]:
    """The inputs for the log: numeric readings as the encoder read them (floats, NaN where
    null: one array per column, no per-value work), categories as given."""
    pre = model.predictor.preprocessor
    logged: dict[str, Any] = {c: readings[:, j] for j, c in enumerate(pre.numeric)}
    for c in SETUP.schema.columns:
        if c not in logged:
            logged[c] = columns[c]
    return logged


def _log_rows(
    request_id: str,
    model: Loaded,
    route: str,
    inputs: dict[str, Any],
    answer: Answer,
    elapsed: float,
) -> Answered:
    return Answered(
        request_id=request_id,
        ts=datetime.now(UTC),
        model=model.name,
        version=model.version,
        route=route,
        inputs=inputs,
        predictions=answer.labels,
        scores=answer.positive_scores(),
        latency_ms=elapsed * 1000.0,
    )


def _failed_rows(request_id: str, model: Loaded, n: int, elapsed: float) -> Answered:
    """A canary's failed attempt at a request, for the log: no inputs, no scores."""
    return Answered(
        request_id=request_id,
        ts=datetime.now(UTC),
        model=model.name,
        version=model.version,
        route=FAILED_CANARY,
        inputs={},
        predictions=[""] * n,
        scores=np.full(n, np.nan),
        latency_ms=elapsed * 1000.0,
    )


def _describe(routes: Routes) -> dict[str, Any]:
    return {
        "production": routes.production.ref if routes.production else None,
        "canary": routes.canary.ref if routes.canary else None,
        "canary_share": routes.share,
        "shadow": routes.shadow.ref if routes.shadow else None,
    }


cast(Any, MlopsService).add_asgi_middleware(
    BodyGuard, max_bytes=SETUP.serve.max_body_bytes, paths=("/predict", "/admin/reload")
)
