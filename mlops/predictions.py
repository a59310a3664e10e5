"""The prediction log: every answered request, as Parquet under MLOPS_HOME, partitioned by hour.

Written by the server (off the request path, in batches), read by monitoring, the review queue
and `mlops predictions tail`. One row per served record:

    request_id  record  ts (UTC)  model  version  route  prediction (text)  score  latency_ms
    input.<column> ... (one column per input field, named as in the data set)

`route` is production, canary or shadow; shadow rows are answers nobody received. A server
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
from datetime import UTC, datetime
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

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
    # column -> the records' values: transposed on the request path (a few microseconds),
    # so a flush concatenates lists instead of reading thousands of dicts while the workers'
    # requests wait for the interpreter lock
    inputs: Mapping[str, Sequence[Any]]
    predictions: Sequence[Any]
    scores: np.ndarray  # one float per record
    latency_ms: float

    def __len__(self) -> int:
        return len(self.predictions)


def columns_of(records: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict[str, list[Any]]:
    """Records (dicts) as columns, for `Answered.inputs`."""
    return {c: [r[c] for r in records] for c in names}


def to_frame(batches: Sequence[Answered]) -> pd.DataFrame:
    """Columns built once per flush, not per record."""
    sizes = [len(b) for b in batches]
    names = list(dict.fromkeys(c for b in batches for c in b.inputs))
    inputs = pd.DataFrame(
        {
            c: list(chain.from_iterable(b.inputs.get(c, [None] * len(b)) for b in batches))
            for c in names
        }
    )
    frame = pd.DataFrame(
        {
            "request_id": np.repeat([b.request_id for b in batches], sizes),
            "record": np.concatenate([np.arange(n, dtype=np.int32) for n in sizes]),
            "ts": pd.to_datetime(np.repeat([b.ts for b in batches], sizes), utc=True),
            "model": np.repeat([b.model for b in batches], sizes),
            "version": np.repeat(np.asarray([b.version for b in batches], dtype=np.int32), sizes),
            "route": np.repeat([b.route for b in batches], sizes),
            "prediction": [str(p) for b in batches for p in b.predictions],
            "score": np.concatenate([np.asarray(b.scores, dtype=np.float64) for b in batches]),
            "latency_ms": np.repeat([b.latency_ms for b in batches], sizes),
        }
    )
    inputs.columns = [f"{INPUT_PREFIX}{c}" for c in inputs.columns]
    return pd.concat([frame, inputs], axis=1)


def inputs_of(frame: pd.DataFrame) -> pd.DataFrame:
    """The input columns of log rows, named as the data set names them."""
    cols = [c for c in frame.columns if c.startswith(INPUT_PREFIX)]
    return frame[cols].rename(columns=lambda c: c[len(INPUT_PREFIX) :])


class PredictionLog:
    """A buffered, thread-safe writer: `append` is cheap and never raises; a background thread
    writes what has accumulated every `flush_s` seconds. Failures are counted, never raised."""

    def __init__(
        self,
        root: Path,
        *,
        flush_s: float = 1.0,
        on_flush: Callable[[int, bool], None] | None = None,
    ) -> None:
        self.root = Path(root)
        self.flush_s = flush_s
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
        except Exception:  # a log must never fail a request
            self.failures += 1

    def _run(self) -> None:
        while not self._stop.wait(self.flush_s):
            self.flush()

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
            chunk = to_frame(group)
            folder = self.root / str(model) / str(part)
            folder.mkdir(parents=True, exist_ok=True)
            self._seq += 1
            final = folder / f"{self.writer}-{self._seq:06d}.parquet"
            tmp = folder / f".{final.name}.tmp"
            chunk.to_parquet(tmp, index=False)
            os.replace(tmp, final)

    def close(self) -> None:
        self._stop.set()
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
