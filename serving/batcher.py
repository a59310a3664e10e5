"""Adaptive batching inside one worker: requests that arrive while a batch runs are merged into
the next one (up to a record limit), so the batch size follows the load, with no waiting
window when the server is idle.

BentoML's own batching dispatcher cannot do this here: it merges the inputs of one API
before our code sees the request, which loses the per-request routing (canary, shadow) and
request ids; and it answers load it predicts it cannot meet with 503s.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from serving.host import Loaded

# A batch the model answers faster than this runs on the event loop: handing it to the model
# thread and back costs more than that (two wake-ups, the interpreter lock changing hands).
INLINE_BELOW_S = 0.002


@dataclass
class _Job:
    model: Loaded
    x: np.ndarray
    future: asyncio.Future[np.ndarray]


class Batcher:
    """Merges the requests waiting for the model into one batch per model version.

    Where a version's batches take under INLINE_BELOW_S (a moving average, per version), they
    run on the event loop, after one turn of it so that requests parsed in the same turn join;
    slower ones run on the model thread, so the loop goes on parsing the next batch meanwhile.
    """

    def __init__(self, max_records: int) -> None:
        self.max_records = max_records
        self._seconds: dict[int, float] = {}  # id(model) -> moving average time per batch
        # One thread runs the models: the event loop keeps parsing requests meanwhile, and
        # those queue up into the next batch.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._pending: list[_Job] = []
        self._running = False
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.records = 0

    async def scores(self, model: Loaded, x: np.ndarray) -> np.ndarray:
        loop = asyncio.get_running_loop()
        job = _Job(model, x, loop.create_future())
        self._pending.append(job)
        if not self._running:
            self._running = True
            self._task = loop.create_task(self._drain())
        return await job.future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                await asyncio.sleep(0)  # requests parsed in this turn of the loop join
                batch: list[_Job] = []
                size = 0
                while self._pending and (
                    not batch or size + len(self._pending[0].x) <= self.max_records
                ):
                    job = self._pending.pop(0)
                    batch.append(job)
                    size += len(job.x)
                groups: dict[int, list[_Job]] = {}
                for job in batch:
                    groups.setdefault(id(job.model), []).append(job)
                for jobs in groups.values():
                    model = jobs[0].model
                    x = jobs[0].x if len(jobs) == 1 else np.concatenate([j.x for j in jobs])
                    try:
                        out = await self._run(loop, model, x)
                    except Exception as exc:
                        for j in jobs:
                            if not j.future.done():
                                j.future.set_exception(exc)
                        continue
                    self.batches += 1
                    self.records += len(x)
                    start = 0
                    for j in jobs:
                        if not j.future.done():
                            j.future.set_result(out[start : start + len(j.x)])
                        start += len(j.x)
        finally:
            self._running = False

    async def _run(
        self, loop: asyncio.AbstractEventLoop, model: Loaded, x: np.ndarray
    ) -> np.ndarray:
        key = id(model)
        average = self._seconds.get(key, 0.0)  # a new version starts inline and is measured
        started = time.perf_counter()
        if average < INLINE_BELOW_S:
            out = model.predictor.scores_from_inputs(x)
        else:
            out = await loop.run_in_executor(self._executor, model.predictor.scores_from_inputs, x)
        took = time.perf_counter() - started
        self._seconds[key] = took if key not in self._seconds else 0.8 * average + 0.2 * took
        return out

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
