"""The prediction log: every answered request, as Parquet under MLOPS_HOME, partitioned by hour.

Written by the server (off the request path, in batches), read by monitoring, the review queue
and `mlops predictions tail`. One row per served record:

    request_id  record  ts (UTC)  model  version  route  inputs (JSON)  prediction (JSON)
    score  latency_ms

`route` is production, canary or shadow; shadow rows are answers nobody received. Files are
`<home>/predictions/<model>/date=YYYY-MM-DD/hour=HH/<writer>-<n>.parquet`, each written to a
temporary name and renamed, so a reader never sees half a file and a crash loses at most the
rows of the last flush interval.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

COLUMNS = (
    "request_id",
    "record",
    "ts",
    "model",
    "version",
    "route",
    "inputs",
    "prediction",
    "score",
    "latency_ms",
)
# Rows kept for a retry after a failed write; past this the oldest are dropped (and counted).
MAX_BUFFERED = 200_000


@dataclass(frozen=True)
class Row:
    request_id: str
    record: int
    ts: datetime
    model: str
    version: int
    route: str
    inputs: dict[str, Any]
    prediction: Any
    score: float | None
    latency_ms: float


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


def to_frame(rows: Iterable[Row]) -> pd.DataFrame:
    records = [
        {
            "request_id": r.request_id,
            "record": r.record,
            "ts": r.ts,
            "model": r.model,
            "version": r.version,
            "route": r.route,
            "inputs": json.dumps(r.inputs, default=_jsonable),
            "prediction": json.dumps(_jsonable(r.prediction)),
            "score": None if r.score is None else float(r.score),
            "latency_ms": float(r.latency_ms),
        }
        for r in rows
    ]
    frame = pd.DataFrame.from_records(records, columns=list(COLUMNS))
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    return frame.astype({"record": "int32", "version": "int32", "score": "float64"})


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
        self._rows: list[Row] = []
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

    def append(self, rows: Iterable[Row]) -> None:
        try:
            with self._lock:
                self._rows.extend(rows)
                over = len(self._rows) - MAX_BUFFERED
                if over > 0:
                    del self._rows[:over]
                    self.dropped += over
        except Exception:  # a log must never fail a request
            self.failures += 1

    def _run(self) -> None:
        while not self._stop.wait(self.flush_s):
            self.flush()

    def flush(self) -> int:
        """Write what is buffered; returns the rows written (0 on failure: they stay buffered)."""
        with self._flush_lock:
            with self._lock:
                rows, self._rows = self._rows, []
            if not rows:
                return 0
            try:
                self._write(rows)
            except Exception:
                self.failures += 1
                with self._lock:
                    self._rows[:0] = rows
                if self.on_flush:
                    self.on_flush(len(rows), False)
                return 0
            self.written += len(rows)
            if self.on_flush:
                self.on_flush(len(rows), True)
            return len(rows)

    def _write(self, rows: list[Row]) -> None:
        frame = to_frame(rows)
        by_part = frame.groupby(
            [frame["model"], frame["ts"].dt.strftime("date=%Y-%m-%d/hour=%H")], sort=False
        )
        for (model, part), chunk in by_part:
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
