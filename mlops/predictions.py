"""The prediction log: every answered request, as Parquet under MLOPS_HOME, partitioned by hour.

Written by the server (off the request path, in batches), read by monitoring, the review queue
and `mlops predictions tail`. One row per served record:

    request_id  record  ts (UTC)  model  version  route  prediction (text)  score  latency_ms
    input.<column> ... (one column per input field, named as in the data set; the server logs
    numeric fields as floats, null where a nullable reading was null)

`route` is production, canary or shadow (shadow rows are answers nobody received), or
canary-error: a canary's failed attempt, answered by production (logged as production). A server
takes one input schema for its model name (it refuses a version whose schema differs), so
a model's files share their `input.*` columns. Files are
`<home>/predictions/<model>/date=YYYY-MM-DD/hour=HH/<writer>-<n>.parquet`, each written to a
temporary name and renamed, so a reader never sees half a file and a crash loses at most the
rows of the last flush interval.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

COLUMNS = (
    "request_id",
    "record",
    "ts",
    "model",
    "version",
    "route",
    "prediction",
    "score",
    "latency_ms",
)
INPUT_PREFIX = "input."
# Routes of answers somebody received; shadow answers reached nobody, and a canary's failed
# attempt (answered by production instead) is logged as FAILED_CANARY, without inputs.
SERVED_ROUTES = ("production", "canary")
FAILED_CANARY = "canary-error"
# Records kept for a retry after a failed write; past this the oldest are dropped (and counted).
MAX_BUFFERED = 200_000


@dataclass(frozen=True)
class Answered:
    """One request's records as a server answered them (or a shadow would have)."""

    request_id: str
    ts: datetime
    model: str
    version: int
    route: str
    # column -> the records' values (a list, or an array: the server passes numeric readings as
    # the float arrays its encoder read, so a flush joins arrays instead of converting values
    # one by one while the workers' requests wait for the interpreter lock)
    inputs: Mapping[str, Sequence[Any]]
    predictions: Sequence[Any]
    scores: np.ndarray  # one float per record
    latency_ms: float

    def __len__(self) -> int:
        return len(self.predictions)


def to_table(batches: Sequence[Answered]) -> pa.Table:
    """The log's rows for `batches`: columns built once per flush, straight into Arrow (pandas
    cost four times as much, and a flush holds the interpreter lock the requests need)."""
    sizes = np.asarray([len(b) for b in batches], dtype=np.int64)
    names = list(dict.fromkeys(c for b in batches for c in b.inputs))

    def repeated(values: list[Any], kind: pa.DataType) -> pa.Array:
        return pa.array(values, type=kind).take(pa.array(np.repeat(np.arange(len(values)), sizes)))

    us = np.asarray([(b.ts - _EPOCH) // _US for b in batches], dtype=np.int64)
    columns: dict[str, pa.Array] = {
        "request_id": repeated([b.request_id for b in batches], pa.string()),
        "record": pa.array(np.concatenate([np.arange(n, dtype=np.int32) for n in sizes])),
        "ts": pa.array(np.repeat(us * 1000, sizes), type=_TS),
        "model": repeated([b.model for b in batches], pa.string()),
        "version": pa.array(
            np.repeat(np.asarray([b.version for b in batches], dtype=np.int32), sizes)
        ),
        "route": repeated([b.route for b in batches], pa.string()),
        "prediction": pa.array([str(p) for b in batches for p in b.predictions], type=pa.string()),
        "score": pa.array(
            np.concatenate([np.asarray(b.scores, dtype=np.float64) for b in batches])
        ),
        "latency_ms": pa.array(
            np.repeat(np.asarray([b.latency_ms for b in batches], dtype=np.float64), sizes)
        ),
    }
    for c in names:
        values = _concat([b.inputs.get(c, [None] * len(b)) for b in batches])
        columns[f"{INPUT_PREFIX}{c}"] = pa.array(values, from_pandas=True)  # NaN -> null
    return pa.table(columns)


_TS = pa.timestamp("ns", tz="UTC")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def _concat(parts: Sequence[Sequence[Any]]) -> np.ndarray | list[Any]:
    """One column from its per-request parts: arrays join as arrays, anything else as a list."""
    if all(isinstance(p, np.ndarray) for p in parts):
        return np.concatenate(parts)
    return list(chain.from_iterable(p.tolist() if isinstance(p, np.ndarray) else p for p in parts))


def inputs_of(frame: pd.DataFrame) -> pd.DataFrame:
    """The input columns of log rows, named as the data set names them."""
    cols = [c for c in frame.columns if c.startswith(INPUT_PREFIX)]
    return frame[cols].rename(columns=lambda c: c[len(INPUT_PREFIX) :])


class PredictionLog:
    """A buffered, thread-safe writer: `append` is cheap and never raises; a background thread
    writes what has accumulated every `flush_s` seconds, or as soon as `flush_rows` rows wait
    (under load a flush of a few seconds' rows held the interpreter lock long enough to stall
    the requests: BENCHMARKS.md). Failures are counted, never raised."""

    def __init__(
        self,
        root: Path,
        *,
        flush_s: float = 1.0,
        flush_rows: int = 10_000,
        on_flush: Callable[[int, bool], None] | None = None,
    ) -> None:
        self.root = Path(root)
        self.flush_s = flush_s
        self.flush_rows = flush_rows
        self.on_flush = on_flush  # (rows, ok) after each write attempt
        self.writer = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.failures = 0
        self.dropped = 0
        self.written = 0
        self._rows: list[Answered] = []
        self._buffered = 0
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._seq = 0
        self._stop = threading.Event()
        self._due = threading.Event()  # set when flush_rows rows wait, or to stop
        self._thread: threading.Thread | None = None

    def start(self) -> PredictionLog:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
            self._thread.start()
        return self

    def append(self, answered: Answered) -> None:
        try:
            with self._lock:
                self._rows.append(answered)
                self._buffered += len(answered)
                while self._buffered > MAX_BUFFERED and len(self._rows) > 1:
                    gone = self._rows.pop(0)
                    self._buffered -= len(gone)
                    self.dropped += len(gone)
                due = self._buffered >= self.flush_rows
            if due and not self._due.is_set():
                self._due.set()
        except Exception:  # a log must never fail a request
            self.failures += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self._due.wait(self.flush_s)
            self._due.clear()
            if self._stop.is_set():
                break
            failures = self.failures
            self.flush()
            if self.failures > failures:  # a failing disk: retry on the clock, not per request
                self._stop.wait(self.flush_s)

    def flush(self) -> int:
        """Write what is buffered; returns the rows written (0 on failure: they stay buffered)."""
        with self._flush_lock:
            with self._lock:
                batches, self._rows = self._rows, []
                count, self._buffered = self._buffered, 0
            if not batches:
                return 0
            try:
                self._write(batches)
            except Exception:
                self.failures += 1
                with self._lock:
                    self._rows[:0] = batches
                    self._buffered += count
                if self.on_flush:
                    self.on_flush(count, False)
                return 0
            self.written += count
            if self.on_flush:
                self.on_flush(count, True)
            return count

    def _write(self, batches: list[Answered]) -> None:
        # Partitions by request, not by row: formatting a time per row cost as much as the rest.
        parts: dict[tuple[str, str], list[Answered]] = {}
        for b in batches:
            hour = b.ts.astimezone(UTC).strftime("date=%Y-%m-%d/hour=%H")
            parts.setdefault((b.model, hour), []).append(b)
        for (model, part), group in parts.items():
            chunk = to_table(group)
            folder = self.root / str(model) / str(part)
            folder.mkdir(parents=True, exist_ok=True)
            self._seq += 1
            final = folder / f"{self.writer}-{self._seq:06d}.parquet"
            tmp = folder / f".{final.name}.tmp"
            pq.write_table(chunk, tmp)
            os.replace(tmp, final)

    def close(self) -> None:
        self._stop.set()
        self._due.set()
        if self._thread is not None:
            self._thread.join(timeout=self.flush_s + 5)
            self._thread = None
        self.flush()


def log_files(root: Path, model: str | None = None) -> list[Path]:
    """The log's files, oldest first (by partition, then by name within it)."""
    base = Path(root) / model if model else Path(root)
    if not base.is_dir():
        return []
    files = [p for p in base.rglob("*.parquet") if not p.name.startswith(".")]
    return sorted(files, key=lambda p: (p.parent.parent.name, p.parent.name, p.stat().st_mtime))


def read_log(
    root: Path,
    model: str | None = None,
    *,
    since: datetime | None = None,
    last: int | None = None,
) -> pd.DataFrame:
    """Rows of the prediction log, oldest first: all of them, those at or after `since`, or
    the `last` n."""
    files = log_files(root, model)
    if since is not None:
        cutoff = since.astimezone(UTC).strftime("date=%Y-%m-%d/hour=%H")
        files = [f for f in files if f"{f.parent.parent.name}/{f.parent.name}" >= cutoff]
    frames: list[pd.DataFrame] = []
    count = 0
    for f in reversed(files) if last else files:
        frame = pd.read_parquet(f)
        frames.append(frame)
        count += len(frame)
        if last and count >= last:
            break
    if not frames:
        return pd.DataFrame(columns=list(COLUMNS))
    out = pd.concat(frames[::-1] if last else frames, ignore_index=True)
    out = out.sort_values("ts", kind="stable").reset_index(drop=True)
    if since is not None:
        out = out[out["ts"] >= pd.Timestamp(since).tz_convert("UTC")].reset_index(drop=True)
    return out.tail(last).reset_index(drop=True) if last else out
