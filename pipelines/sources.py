"""Data sources: the built-in AI4I 2020 generator and user CSV/parquet tables.

The generator follows Matzka (2020), "Explainable AI for predictive maintenance applications",
calibrated so that a default batch matches the published UCI AI4I 2020 file.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
import pandas as pd

from mlops.errors import MlopsError

Task = Literal["classification", "regression"]
TASKS: tuple[str, ...] = ("classification", "regression")

AI4I_COLUMNS: tuple[str, ...] = (
    "UDI",
    "Product ID",
    "Type",
    "Air temperature [K]",
    "Process temperature [K]",
    "Rotational speed [rpm]",
    "Torque [Nm]",
    "Tool wear [min]",
    "Machine failure",
    "TWF",
    "HDF",
    "PWF",
    "OSF",
    "RNF",
)
FAILURE_MODES: tuple[str, ...] = ("TWF", "HDF", "PWF", "OSF", "RNF")

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def _names(cols: Iterable[Any], limit: int = 20) -> str:
    """Column names for a one-line message, truncated so wide tables stay readable."""
    names = [str(c) for c in cols]
    shown = ", ".join(names[:limit])
    return shown + (f", ... (+{len(names) - limit} more)" if len(names) > limit else "")


def did_you_mean(name: str, cols: Iterable[Any]) -> str:
    """'; did you mean 'X'?' for the columns closest to `name` (case and spaces aside first),
    however far down a wide table they sit; '' when none is close."""
    import difflib

    names = [str(c) for c in cols]
    folded = {" ".join(n.lower().split()): n for n in names}
    same = folded.get(" ".join(name.lower().split()))
    close = [same] if same else difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_dataset_name(name: str) -> str:
    """A data set name becomes file and folder names: letters, digits, '-', '_', '.' only."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or ".." in name:
        raise MlopsError(
            f"invalid data set name {name!r}: use letters, digits, '-', '_' and '.' "
            "(starting with a letter or digit, no '..', at most 128 characters)"
        )
    return name


@dataclass(frozen=True)
class DatasetSpec:
    """What a table means: which column is the target, which are model inputs."""

    name: str
    task: Task
    target: str
    features: tuple[str, ...]
    categorical: tuple[str, ...]
    id_columns: tuple[str, ...]
    excluded: tuple[str, ...]
    # The label whose precision, recall, F1 and PR-AUC are reported (binary targets only).
    positive_class: Any = None

    def __post_init__(self) -> None:
        check_dataset_name(self.name)
        where = f"dataset spec '{self.name}'"
        if self.task not in TASKS:
            raise MlopsError(f"{where}: task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if len(set(self.features)) != len(self.features):
            raise MlopsError(f"{where}: duplicate feature names")
        # A target, id or excluded column among the features is a label leak or a memorised key.
        leaks = set(self.features) & ({self.target} | set(self.id_columns) | set(self.excluded))
        if leaks:
            raise MlopsError(
                f"{where}: {_names(repr(c) for c in sorted(leaks))} cannot be features"
            )
        stray = set(self.categorical) - set(self.features)
        if stray:
            raise MlopsError(
                f"{where}: categorical {_names(repr(c) for c in sorted(stray))} not among features"
            )
        if self.positive_class is not None and self.task != "classification":
            raise MlopsError(f"{where}: a positive class applies to classification only")

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-friendly dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DatasetSpec:
        """Builds a spec from `to_dict` output; MlopsError on missing or mistyped keys."""
        # Unknown keys are ignored so specs written by a newer version still load.
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "positive_class":  # optional: specs written before it existed lack it
                values[f.name] = d.get(f.name)
                continue
            if f.name not in d:
                raise MlopsError(f"dataset spec: missing key '{f.name}'")
            v = d[f.name]
            if f.name in ("name", "task", "target"):
                if not isinstance(v, str):
                    raise MlopsError(f"dataset spec: '{f.name}' must be a string, got {v!r}")
            else:
                if isinstance(v, str) or not isinstance(v, Iterable):
                    raise MlopsError(f"dataset spec: '{f.name}' must be a list of column names")
                v = tuple(v)
                if not all(isinstance(c, str) for c in v):
                    raise MlopsError(f"dataset spec: '{f.name}' must be a list of column names")
            values[f.name] = v
        return cls(**values)

    def check(self, df: pd.DataFrame, where: str, *, need_target: bool = True) -> None:
        """Raises MlopsError if the target (unless not needed), a feature or an id column is
        missing from `df`."""
        wanted = ([self.target] if need_target else []) + [*self.features, *self.id_columns]
        missing = [c for c in dict.fromkeys(wanted) if c not in df.columns]
        if missing:
            raise MlopsError(
                f"{where}: missing column(s) {_names(repr(c) for c in missing)} for dataset "
                f"'{self.name}' (columns: {_names(df.columns)})"
            )


AI4I_SPEC = DatasetSpec(
    name="ai4i",
    task="classification",
    target="Machine failure",
    features=(
        "Type",
        "Air temperature [K]",
        "Process temperature [K]",
        "Rotational speed [rpm]",
        "Torque [Nm]",
        "Tool wear [min]",
    ),
    categorical=("Type",),
    id_columns=("UDI", "Product ID"),
    # The failure-mode flags spell out the label: as features they would leak it.
    excluded=FAILURE_MODES,
    positive_class=1,  # a machine failure
)


# ---------------------------------------------------------------------------------------------
# AI4I 2020 generator

_TYPES = np.array(["L", "M", "H"])
_DEFAULT_MIX = (0.5, 0.3, 0.2)
_WEAR_PER_PROCESS = np.array([2.0, 3.0, 5.0])  # L, M, H minutes per process
_OSF_LIMIT_TENTHS = np.array([110_000, 120_000, 130_000])  # minNm x 10, for L, M, H
# Product IDs in the public file are the type letter plus a per-type serial that advances with
# UDI (UDI 1 is M14860, UDI 2 is L47181, UDI 11 is H29862).
_SERIAL_BASE = np.array([47_179, 14_859, 29_851])
# Published sds of the numeric sensors: `sensor_noise` is a fraction of these.
_SENSOR_SD = {"air": 2.0, "process": 1.48, "speed": 179.0, "torque": 10.0}
# The published file has 19 random failures in 10,000 rows, not the paper's 0.1 %.
_RNF_P = 0.0019
# Share of tool-life events (~130 per 10,000 rows) that end in a failure rather than a planned
# replacement: 0.36 reproduces the published 46 TWF rows.
_TWF_P = 0.36
# Correlation of row-to-row temperature walks. A pure random walk wanders without bound, and a
# batch would then be one long excursion, so the failure rates of two batches would differ
# wildly; a mean-reverting walk with a ~100-process memory keeps batches comparable.
_WALK_PHI = 0.99
# The published process temperature has sd 1.48 K, below sqrt(2^2 + 1^2): its 1 K walk leans
# against air temperature (correlation about -0.7), as in a regulated process.
_PROCESS_AIR_CORR = -0.7
# Speed = a + b / (torque + c) + N(0, d) rpm. Read literally, "2860 W" at 40 Nm would be ~680 rpm;
# the curve is instead fitted to the published file: speed mean 1539, sd 179, 1168..2886 rpm,
# strongly negatively correlated with torque, and its PWF and HDF counts.
_SPEED_RPM = (268.0, 100_000.0, 40.0, 40.0)


@dataclass(frozen=True)
class Ai4iDrift:
    """Drift scenarios for the generator; the defaults mean no drift."""

    ambient_shift_k: float = 0.0  # added to air and process temperature
    product_mix: tuple[float, float, float] | None = None  # P(L), P(M), P(H)
    torque_bias_nm: float = 0.0  # sensor offset, recorded column only
    speed_bias_rpm: float = 0.0  # sensor offset, recorded column only
    sensor_noise: float = 0.0  # extra noise sd as a fraction of each sensor's sd
    tool_wear_rate: float = 1.0  # multiplies wear per process (worn tooling)
    # Share of rows whose process temperature is shuffled among themselves (a failed regulator):
    # each column keeps exactly its values, only the air/process correlation breaks.
    decouple_temperatures: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name != "product_mix" and (
                isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)
            ):
                raise MlopsError(f"drift {f.name}: expected a finite number, got {v!r}")
        if self.sensor_noise < 0:
            raise MlopsError(f"drift sensor_noise: must be >= 0, got {self.sensor_noise}")
        if self.tool_wear_rate <= 0:
            raise MlopsError(f"drift tool_wear_rate: must be > 0, got {self.tool_wear_rate}")
        if not 0 <= self.decouple_temperatures <= 1:
            raise MlopsError(
                f"drift decouple_temperatures: must be in [0, 1], got {self.decouple_temperatures}"
            )
        if self.product_mix is not None:
            mix = tuple(self.product_mix)
            if len(mix) != 3 or not all(
                isinstance(p, int | float) and math.isfinite(p) and p >= 0 for p in mix
            ):
                raise MlopsError(
                    f"drift product_mix: expected 3 probabilities for L/M/H, got {mix!r}"
                )
            if abs(sum(mix) - 1.0) > 1e-6:
                raise MlopsError(f"drift product_mix: probabilities must sum to 1, got {sum(mix)}")
            object.__setattr__(self, "product_mix", tuple(float(p) for p in mix))

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-friendly dict, e.g. for batch lineage."""
        d = asdict(self)
        d["product_mix"] = list(self.product_mix) if self.product_mix is not None else None
        return d


def parse_drift(spec: str) -> Ai4iDrift:
    """Parses 'ambient_shift_k=5,tool_wear_rate=2,product_mix=0.2/0.3/0.5' ('' or 'none': none)."""
    known = [f.name for f in fields(Ai4iDrift)]
    values: dict[str, Any] = {}
    text = spec.strip()
    if text.lower() in ("", "none"):
        return Ai4iDrift()
    for item in text.split(","):
        key, sep, raw = (s.strip() for s in item.partition("="))
        if not sep or not key:
            raise MlopsError(f"drift {spec!r}: expected key=value, got {item.strip()!r}")
        if key not in known:
            raise MlopsError(f"drift {spec!r}: unknown key {key!r} (known: {', '.join(known)})")
        if key in values:
            raise MlopsError(f"drift {spec!r}: key {key!r} given twice")
        parts = raw.split("/") if key == "product_mix" else [raw]
        try:
            nums = [float(p) for p in parts]
        except ValueError:
            raise MlopsError(f"drift {spec!r}: {key}={raw!r} is not a number") from None
        if not all(math.isfinite(x) for x in nums):
            raise MlopsError(f"drift {spec!r}: {key}={raw!r} is not a finite number")
        values[key] = tuple(nums) if key == "product_mix" else nums[0]
    return Ai4iDrift(**values)


def _walk(rng: np.random.Generator, n: int) -> FloatArray:
    """A mean-reverting random walk (AR(1)) normalised to mean 0, sd 1 over the batch."""
    from scipy.signal import lfilter  # heavy import: only when generating

    e = rng.standard_normal(n) * math.sqrt(1 - _WALK_PHI**2)
    e[0] /= math.sqrt(1 - _WALK_PHI**2)  # start in the stationary distribution
    x = np.asarray(lfilter([1.0], [1.0, -_WALK_PHI], e), dtype=np.float64)
    return _standardise(x)


def _standardise(x: FloatArray) -> FloatArray:
    centred: FloatArray = x - float(x.mean())
    sd = float(centred.std())
    return centred / sd if sd > 0 else centred


def _tool_wear(
    rng: np.random.Generator, kind: IntArray, rate: float
) -> tuple[FloatArray, IntArray]:
    """Nominal tool wear before each process, and the TWF flag.

    Each tool ends its life at a random nominal wear point in 200-240 min: it fails (TWF) or is
    replaced, and the next process starts a new tool at 0 min.
    """
    n = len(kind)
    inc = _WEAR_PER_PROCESS[kind]
    before = np.concatenate(([0.0], np.cumsum(inc)[:-1]))  # total wear before process i
    max_events = n // 40 + 2  # a tool lasts at least 200 / 5 processes
    points = rng.uniform(200.0, 240.0, max_events)
    fail_u = rng.random(max_events)
    # Maintenance schedules replacement by nominal wear (it counts processes), so worn tooling
    # (rate > 1) runs past its rated life; treating failure risk as a hazard over true wear, the
    # chance that a tool fails before its replacement is 1 - (1 - p)^rate.
    p_fail = 1.0 - (1.0 - _TWF_P) ** rate
    nominal = np.empty(n)
    twf = np.zeros(n, dtype=np.int64)
    start, k = 0, 0
    while start < n:
        end = int(np.searchsorted(before, before[start] + points[k], side="left"))
        last = min(end, n - 1)
        nominal[start : last + 1] = before[start : last + 1] - before[start]
        if end >= n:
            break
        twf[end] = int(fail_u[k] < p_fail)
        start, k = end + 1, k + 1
    return nominal, twf


def generate_ai4i(
    rows: int, seed: int, drift: Ai4iDrift | None = None, start_udi: int = 1
) -> pd.DataFrame:
    """Generates an AI4I 2020 batch with the public CSV's columns, order and dtypes.

    Deterministic for (rows, seed, drift, start_udi); `start_udi` only numbers the rows.
    """
    for label, value, least in (("rows", rows, 1), ("seed", seed, 0), ("start_udi", start_udi, 1)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
            raise MlopsError(
                f"ai4i generator: {label} must be an integer >= {least}, got {value!r}"
            )
    drift = drift if drift is not None else Ai4iDrift()
    # One stream per component, so a drift knob changes only what it touches.
    # A child stream depends on its index only: adding a ninth left the first eight unchanged.
    rng = [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(9)]

    mix = np.cumsum(drift.product_mix or _DEFAULT_MIX)
    kind = np.minimum(np.searchsorted(mix, rng[0].random(rows), side="right"), 2).astype(np.int64)

    air_walk = _walk(rng[1], rows)
    gap = _standardise(
        _PROCESS_AIR_CORR * air_walk + math.sqrt(1 - _PROCESS_AIR_CORR**2) * _walk(rng[2], rows)
    )
    air = np.round(300.0 + drift.ambient_shift_k + 2.0 * air_walk, 1)
    process = np.round(300.0 + drift.ambient_shift_k + 2.0 * air_walk + 10.0 + gap, 1)
    if drift.decouple_temperatures > 0:
        # Before the failure rules: the machine's physics now sees the decoupled temperatures.
        rows_hit = np.flatnonzero(rng[8].random(rows) < drift.decouple_temperatures)
        process[rows_hit] = process[rng[8].permutation(rows_hit)]

    torque: FloatArray = np.abs(rng[3].normal(40.0, 10.0, rows)).round(1)
    # Speed follows a softened constant-power hyperbola in torque, plus gaussian noise.
    speed = np.round(
        _SPEED_RPM[0]
        + _SPEED_RPM[1] / (torque + _SPEED_RPM[2])
        + rng[4].normal(0.0, _SPEED_RPM[3], rows)
    )
    speed = np.maximum(speed, 0.0).astype(np.int64)

    nominal, twf = _tool_wear(rng[5], kind, drift.tool_wear_rate)
    wear = np.round(nominal * drift.tool_wear_rate).astype(np.int64)

    # Failures come from the true physical values: a biased or noisy sensor changes what a model
    # sees, not how the machine behaves. Integer tenths keep the thresholds exact.
    tenths_gap = np.round(process * 10) - np.round(air * 10)
    hdf = ((tenths_gap < 86) & (speed < 1380)).astype(np.int64)
    power = torque * speed * (2 * math.pi / 60)
    pwf = ((power < 3500) | (power > 9000)).astype(np.int64)
    osf = (wear * np.round(torque * 10).astype(np.int64) > _OSF_LIMIT_TENTHS[kind]).astype(np.int64)
    rnf = (rng[6].random(rows) < _RNF_P).astype(np.int64)
    failure = twf | hdf | pwf | osf | rnf

    if drift.sensor_noise > 0:
        noise = {
            k: rng[7].normal(0.0, drift.sensor_noise * sd, rows) for k, sd in _SENSOR_SD.items()
        }
        air = np.round(air + noise["air"], 1)
        process = np.round(process + noise["process"], 1)
        torque = torque + noise["torque"]
        speed = np.round(speed + noise["speed"]).astype(np.int64)
    # Clipped so a drifted batch still honours the physical contract (no negative readings).
    torque = np.maximum(torque + drift.torque_bias_nm, 0.0).round(1)
    speed = np.maximum(speed + round(drift.speed_bias_rpm), 0).astype(np.int64)

    udi = np.arange(start_udi, start_udi + rows, dtype=np.int64)
    letters = _TYPES[kind]
    product_id = pd.Series(letters).str.cat(pd.Series(_SERIAL_BASE[kind] + udi).astype(str))
    columns: dict[str, Any] = {
        "UDI": udi,
        "Product ID": product_id.to_numpy(dtype=object),
        "Type": letters.astype(object),
        "Air temperature [K]": air,
        "Process temperature [K]": process,
        "Rotational speed [rpm]": speed,
        "Torque [Nm]": torque,
        "Tool wear [min]": wear,
        "Machine failure": failure,
        "TWF": twf,
        "HDF": hdf,
        "PWF": pwf,
        "OSF": osf,
        "RNF": rnf,
    }
    return pd.DataFrame(columns, columns=list(AI4I_COLUMNS))


# ---------------------------------------------------------------------------------------------
# User tables


SEPARATORS: dict[str, str] = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
SNIFF_BYTES = 64 * 1024
# A value such as "1,5" or "-0,25": a number written with a decimal comma.
_DECIMAL_COMMA = re.compile(r"\s*[-+]?(\d+,\d*|\d*,\d+)([eE][-+]?\d+)?\s*")
_PLAIN_NUMBER = re.compile(r"\s*[-+]?\d+([eE][-+]?\d+)?\s*")


@dataclass(frozen=True)
class Table:
    """A user table as read, and how it was read (for CSV: separator, BOM, decimal mark)."""

    frame: pd.DataFrame
    sep: str | None = None
    bom: bool = False
    decimal: str = "."

    def notes(self) -> list[str]:
        """What a user should know about how the file was read (nothing for a plain CSV)."""
        out = []
        if self.sep is not None and self.sep != ",":
            out.append(f"delimiter: {SEPARATORS.get(self.sep, repr(self.sep))} ({self.sep!r})")
        if self.bom:
            out.append("encoding: UTF-8 with a byte-order mark")
        if self.decimal != ".":
            out.append(f"decimal mark: {self.decimal!r}")
        return out


def parse_sep(value: str | None) -> str | None:
    """`--sep` as typed: a character or its name (comma, semicolon, tab, pipe); None to sniff."""
    if value is None or value == "":
        return None
    names = {v: k for k, v in SEPARATORS.items()}
    sep = names.get(value.lower(), "\t" if value in ("\\t", "tab") else value)
    if sep not in SEPARATORS:
        raise MlopsError(f"--sep {value!r}: one of comma, semicolon, tab, pipe (or , ; | \\t)")
    return sep


def parse_decimal(value: str | None) -> str | None:
    if value is None or value == "" or value == ".":
        return None
    if value != ",":
        raise MlopsError(f"--decimal {value!r}: the decimal mark is '.' (default) or ','")
    return value


def read_table(
    path: Path,
    kind: Literal["csv", "parquet"],
    *,
    sep: str | None = None,
    decimal: str | None = None,
) -> pd.DataFrame:
    """Reads a user CSV or parquet file; any unreadable input is a one-line MlopsError."""
    return load_table(path, kind, sep=sep, decimal=decimal).frame


def load_table(
    path: Path,
    kind: Literal["csv", "parquet"],
    *,
    sep: str | None = None,
    decimal: str | None = None,
) -> Table:
    """Reads a user table from any readable path; CSV separators and BOMs are sniffed.

    `sep` forces the CSV separator; `decimal=","` reads numbers written with a decimal comma
    (without it such a column is an error that names it, never silently text).
    """
    where = f"{kind} source {path}"
    if kind not in ("csv", "parquet"):
        raise MlopsError(f"{where}: kind must be 'csv' or 'parquet'")
    path = Path(path)
    if not path.exists():
        raise MlopsError(f"{where}: file not found")
    if path.is_dir():
        raise MlopsError(f"{where}: is a directory, not a file")
    try:
        if path.stat().st_size == 0:
            raise MlopsError(f"{where}: file is empty")
        with path.open("rb") as fh:
            head = fh.read(SNIFF_BYTES)
        table = (
            _read_csv(path, where, head, sep=sep, decimal=decimal)
            if kind == "csv"
            else Table(_read_parquet(path, where))
        )
    except OSError as e:
        raise MlopsError(f"{where}: cannot read ({e.strerror or e})") from None
    if len(table.frame) == 0:
        raise MlopsError(f"{where}: no rows")
    return table


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def sniff_separator(text: str) -> str:
    """The separator that splits the header widest while giving every sampled row that width
    (comma wins ties); comma when none does."""
    lines = text.splitlines()
    if len(lines) > 1:
        lines = lines[:-1]  # the sample may end inside a row
    sample = "\n".join(lines)
    best, best_width = ",", 1
    for cand in SEPARATORS:
        rows = [r for r in csv.reader(io.StringIO(sample), delimiter=cand) if any(r)]
        if not rows:
            continue
        width = len(rows[0])
        if width > best_width and all(len(r) == width for r in rows[1:]):
            best, best_width = cand, width
    return best


def _read_csv(
    path: Path, where: str, head: bytes, *, sep: str | None, decimal: str | None
) -> Table:
    if head.startswith(b"PAR1"):
        raise MlopsError(f"{where}: looks like a parquet file, not CSV")
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise MlopsError(f"{where}: UTF-16 text; save it as UTF-8")
    if b"\x00" in head:
        raise MlopsError(f"{where}: binary content, not a CSV text file")
    bom = head.startswith(b"\xef\xbb\xbf")
    if sep is None:
        # The sample may end inside a multi-byte character: that is not an encoding error.
        sep = sniff_separator(head.decode("utf-8-sig", errors="ignore"))
    if decimal == "," and sep == ",":
        raise MlopsError(f"{where}: a decimal comma needs another separator (--sep ';')")
    _check_fields(path, where, sep)
    try:
        frame = pd.read_csv(
            path, sep=sep, decimal=decimal or ".", encoding="utf-8-sig", low_memory=False
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        raise MlopsError(f"{where}: cannot parse CSV ({_first_line(e)})") from None
    if decimal is None:
        _refuse_decimal_commas(frame, where)
    return Table(frame, sep=sep, bom=bom, decimal=decimal or ".")


def _check_fields(path: Path, where: str, sep: str) -> None:
    """Every record has the header's field count (pandas would silently pad short rows with
    NaN, or turn a wider body into an index)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh, delimiter=sep)
            header: list[str] | None = None
            bad: tuple[int, int] | None = None
            line = 0  # where the current record starts: a quoted field may span lines
            for row in reader:
                line, start = reader.line_num, line + 1
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if bad is not None:
                    break  # a record follows the short one: not a cut-off end
                if header is None:
                    header = row
                    dupes = sorted({c for c in row if row.count(c) > 1})
                    if dupes:
                        raise MlopsError(f"{where}: duplicate column name(s) {_names(dupes)}")
                elif len(row) != len(header):
                    bad = (start, len(row))
            else:
                if bad is not None and bad[1] < (len(header) if header else 0):
                    raise MlopsError(
                        f"{where}: the last row (line {bad[0]}) has {bad[1]} of "
                        f"{len(header or [])} fields: the file looks truncated"
                    )
            if bad is not None:
                raise MlopsError(
                    f"{where}: line {bad[0]} has {bad[1]} field(s), the header has "
                    f"{len(header or [])}"
                    + (f" (separator {SEPARATORS[sep]}; --sep to choose another)" if sep else "")
                )
    except UnicodeDecodeError:
        raise MlopsError(f"{where}: not UTF-8 text; save it as UTF-8") from None
    except csv.Error as e:
        raise MlopsError(f"{where}: cannot parse CSV ({_first_line(e)})") from None
    if header is None:
        raise MlopsError(f"{where}: file is empty (blank lines only)")


def _refuse_decimal_commas(frame: pd.DataFrame, where: str) -> None:
    """A column of numbers written as '1,5' would otherwise become text, or a silent category."""
    for col in frame.columns:
        s = frame[col]
        if s.dtype != object:
            continue
        values = s.dropna().astype(str)
        head = values.iloc[:1000]  # a text column shows itself early: skip the full scan
        if (
            values.empty
            or not (head.str.fullmatch(_DECIMAL_COMMA) | head.str.fullmatch(_PLAIN_NUMBER)).all()
        ):
            continue
        comma = values.str.fullmatch(_DECIMAL_COMMA)
        if comma.any() and (comma | values.str.fullmatch(_PLAIN_NUMBER)).all():
            example = values[comma].iloc[0].strip()
            raise MlopsError(
                f"{where}: column {str(col)!r} holds numbers with a decimal comma "
                f"(e.g. {example!r}): pass --decimal , to read them as numbers"
            )


def _read_parquet(path: Path, where: str) -> pd.DataFrame:
    import pyarrow as pa  # for its exception types only

    try:
        return pd.read_parquet(path)
    except (pa.ArrowException, ValueError) as e:
        raise MlopsError(f"{where}: not a readable parquet file ({_first_line(e)})") from None


_ID_NAMES = {"id", "uuid", "udi"}
_MAX_CLASSES = 20


def _looks_like_id(name: str, s: pd.Series) -> bool:
    lower = str(name).strip().lower()
    if lower in _ID_NAMES or lower.endswith(("_id", " id")):
        return True
    # Unique free text is a key, not a category: one-hot encoding it only memorises rows.
    return not pd.api.types.is_numeric_dtype(s) and bool(s.notna().all() and s.is_unique)


def _is_categorical(s: pd.Series) -> bool:
    return (
        pd.api.types.is_bool_dtype(s)
        or isinstance(s.dtype, pd.CategoricalDtype)
        or not pd.api.types.is_numeric_dtype(s)
    )


def infer_spec(
    df: pd.DataFrame,
    name: str,
    target: str,
    task: str | None,
    where: str,
    *,
    positive_class: str | None = None,
) -> tuple[DatasetSpec, str | None]:
    """Builds a spec for a user table.

    Returns the spec and, when `task` is None, a message saying how the task was inferred.
    A binary target's positive class is `positive_class` (matched against the labels as
    text) or else its minority class.
    """
    if target not in df.columns:
        raise MlopsError(
            f"{where}: no column '{target}'{did_you_mean(target, df.columns)} "
            f"(columns: {_names(df.columns)})"
        )
    y = df[target]
    values = y.dropna()
    if values.empty:
        raise MlopsError(f"target '{target}' in {where} has no values (all null)")
    numeric = pd.api.types.is_numeric_dtype(y) and not pd.api.types.is_bool_dtype(y)
    n_distinct = int(values.nunique())
    message: str | None = None
    if task is None:
        if not numeric:
            task, why = "classification", f"is non-numeric ({y.dtype})"
        elif n_distinct <= _MAX_CLASSES and bool((values == np.round(values)).all()):
            task, why = "classification", f"has {n_distinct} distinct integer values (<= 20)"
        else:
            task, why = "regression", f"is numeric with {n_distinct} distinct values"
        message = f"task inferred as {task}: target '{target}' {why} (--task to override)"
    elif task not in TASKS:
        raise MlopsError(f"{where}: task must be 'classification' or 'regression', got {task!r}")
    if n_distinct == 1:
        what = "a single class" if task == "classification" else "a single value"
        raise MlopsError(
            f"target '{target}' in {where} has {what} ({values.iloc[0]}): nothing to learn"
        )
    if task == "regression" and not numeric:
        raise MlopsError(f"target '{target}' in {where} is not numeric ({y.dtype}): cannot regress")

    ids = [c for c in df.columns if c != target and _looks_like_id(c, df[c])]
    features = [c for c in df.columns if c != target and c not in ids]
    if not features:
        raise MlopsError(
            f"{where}: no feature columns besides target '{target}'"
            + (f" and id-like columns ({_names(ids)})" if ids else "")
        )
    positive = None
    if task == "classification":
        positive = _positive_class(values, positive_class, target, where)
    elif positive_class is not None:
        raise MlopsError(f"{where}: --positive-class applies to classification only")
    spec = DatasetSpec(
        name=name,
        task=cast(Task, task),
        target=target,
        features=tuple(str(c) for c in features),
        categorical=tuple(str(c) for c in features if _is_categorical(df[c])),
        id_columns=tuple(str(c) for c in ids),
        excluded=(),
        positive_class=positive,
    )
    return spec, message


def label_key(v: Any) -> str:
    """Labels read back from JSON, parquet or a command line may be 1, 1.0 or "1": one key."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v)


def _positive_class(values: pd.Series, given: str | None, target: str, where: str) -> Any:
    counts = values.value_counts()
    labels = sorted(counts.index.tolist(), key=label_key)
    if given is not None:
        match = [v for v in labels if label_key(v) == label_key(given)]
        if not match:
            raise MlopsError(
                f"{where}: --positive-class {given!r} is not a label of '{target}' "
                f"(labels: {_names(label_key(v) for v in labels)})"
            )
        if len(labels) != 2:
            raise MlopsError(
                f"{where}: --positive-class applies to a binary target; '{target}' has "
                f"{len(labels)} classes (metrics are macro averages)"
            )
        chosen = match[0]
    elif len(labels) != 2:
        return None
    else:  # the minority class (the later label on a tie): failures, frauds, churners
        chosen = min(reversed(labels), key=lambda v: counts[v])
    return chosen.item() if isinstance(chosen, np.generic) else chosen
