"""What a compression run found: one row per variant, the choice, its table and plot."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from rich import box
from rich.table import Table

RULE = (
    "pass: primary-metric drop <= max_quality_drop, agreement >= min_agreement "
    "(classification), cost < 1; choose the lowest cost = (latency@64 / parent's) x "
    "(size / parent's), then the lower latency, then the smaller file"
)


@dataclass(frozen=True)
class VariantResult:
    """One row of the comparison: a variant (or the parent) and what was measured."""

    name: str
    runtime: str
    method: dict[str, Any]
    path: str
    hidden: list[int]
    params: int
    size_bytes: int
    latency_b1_us: float
    latency_b64_us: float
    throughput_b64: float  # rows per second at batch 64
    metrics: dict[str, Any]  # scalar test metrics
    primary: float | None
    drop: float | None  # primary metric lost vs the parent, in metric units (> 0 is worse)
    agreement: float  # share of test rows predicted as the parent does
    cost: float  # latency@64 ratio x size ratio vs the parent
    status: str = ""  # parent | chosen | passed | rejected
    reason: str = ""

    def row(self, metric: str) -> dict[str, Any]:
        """A flat row for the CSV and the table."""
        return {
            "variant": self.name, "status": self.status, "runtime": self.runtime,
            "hidden": "-".join(map(str, self.hidden)), "params": self.params,
            "size_bytes": self.size_bytes, "latency_b1_us": round(self.latency_b1_us, 1),
            "latency_b64_us": round(self.latency_b64_us, 1),
            "throughput_b64_rows_s": round(self.throughput_b64),
            metric: self.primary, "drop": self.drop, "agreement": self.agreement,
            "cost": round(self.cost, 4), "reason": self.reason,
            **{f"test_{k}": v for k, v in self.metrics.items() if k != metric},
        }  # fmt: skip


@dataclass(frozen=True)
class CompressionReport:
    """All variants as measured (the parent first) and the choice among them."""

    task: str
    primary_metric: str
    higher_is_better: bool
    max_quality_drop: float
    min_agreement: float
    variants: list[VariantResult]
    chosen: str | None
    out_dir: Path
    csv_path: Path
    plot_path: Path
    rule: str = RULE
    positive_class: Any = None  # binary classification: the label the metric is about
    # Methods not tried on this parent, and why (a linear model has nothing to prune).
    skipped: dict[str, str] = field(default_factory=dict)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    @property
    def parent(self) -> VariantResult:
        return self.variants[0]

    @property
    def chosen_result(self) -> VariantResult | None:
        return next((v for v in self.variants if v.name == self.chosen), None)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame([v.row(self.primary_metric) for v in self.variants])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("out_dir", "csv_path", "plot_path"):
            d[key] = str(d[key])
        return d


_STATUS_STYLE = {"chosen": "bold green", "passed": "green", "rejected": "red", "parent": "cyan"}


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB"):
        if n < 1000 or unit == "MB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} MB"


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def report_table(report: CompressionReport, *, width: int = 200) -> Table:
    """One row per variant, the parent first; why each variant won or lost is in the caption.

    Below 120 columns of `width` the table keeps the columns the choice is made on.
    """
    m = report.primary_metric
    cells = {
        "variant": lambda v: v.name,
        "hidden": lambda v: "-".join(map(str, v.hidden)) or "linear",
        "params": lambda v: f"{v.params:,}",
        "size": lambda v: human_bytes(v.size_bytes),
        "µs@1": lambda v: f"{v.latency_b1_us:.0f}",
        "µs@64": lambda v: f"{v.latency_b64_us:.0f}",
        "rows/s@64": lambda v: f"{v.throughput_b64:,.0f}",
        m: lambda v: _num(v.primary, ".4f"),
        "drop": lambda v: _num(v.drop, "+.4f"),
        "agree": lambda v: f"{v.agreement:.1%}",
        "cost": lambda v: f"{v.cost:.3f}",
        "status": lambda v: f"[{_STATUS_STYLE.get(v.status, '')}]{v.status}[/]",
    }
    if width < 120:
        for col in ("hidden", "params", "rows/s@64", "cost"):
            del cells[col]
    table = Table(
        title=f"{report.task} model: {m}"
        + (
            f" (positive class {report.positive_class!r})"
            if report.positive_class is not None
            else ""
        )
        + f" tolerance {report.max_quality_drop:g}, chosen: {report.chosen or 'none'}",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for col in cells:
        table.add_column(col, justify="left" if col in ("variant", "status") else "right")
    for v in report.variants:
        table.add_row(*(cell(v) for cell in cells.values()))
    why = [f"{v.name}: {v.reason}" for v in report.variants if v.status in ("rejected", "chosen")]
    why += [f"{name} (not built): {reason}" for name, reason in report.skipped.items()]
    table.caption = "\n".join(why)
    table.caption_justify = "left"
    return table


def plot_tradeoff(report: CompressionReport, path: Path) -> None:
    """Latency at batch 64 against the primary metric; marker area ~ file size."""
    # The object API, not pyplot: no global backend switch in a library call.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import ScalarFormatter

    fig = Figure(figsize=(8, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    biggest = max(v.size_bytes for v in report.variants)
    colors = {"parent": "tab:blue", "chosen": "tab:green", "passed": "tab:olive"}
    for v in report.variants:
        if v.primary is None:
            continue
        size = 40 + 600 * (v.size_bytes / biggest)
        ax.scatter(
            v.latency_b64_us, v.primary, s=size, alpha=0.7,
            c=colors.get(v.status, "tab:red"), marker="o" if v.status != "rejected" else "X",
            edgecolors="black" if v.status == "chosen" else "none", linewidths=2.5,
        )  # fmt: skip
        ax.annotate(v.name, (v.latency_b64_us, v.primary), fontsize=7,
                    xytext=(5, 4), textcoords="offset points")  # fmt: skip
    parent = report.parent
    if parent.primary is not None:
        sign = -1 if report.higher_is_better else 1
        ax.axhline(parent.primary + sign * report.max_quality_drop, ls="--", c="grey", lw=1,
                   label=f"tolerance ({report.max_quality_drop:g} from the parent)")  # fmt: skip
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("latency at batch 64, µs per call (1 thread, log scale)")
    ax.set_ylabel(f"{report.primary_metric} on the test split")
    ax.set_title(f"compression trade-off: chosen {report.chosen or 'none'} "
                 "(green ring); red X = rejected; marker area ~ file size", fontsize=9)  # fmt: skip
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
