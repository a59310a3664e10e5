"""The monitoring flow: Prefect wiring only; the step is `pipelines.monitor.monitor`.

    mlops-monitor(workspace, dataset, since="1h")  ->  a drift report, its summary in the store,
    alerts when a threshold is crossed, and a markdown artifact in the Prefect UI.

Scheduled by the closed loop (issue 12); run by hand with `mlops monitor`.
"""

from __future__ import annotations

import re
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows.retrying import transient
from mlops.params import load_params
from mlops.store import Store
from mlops.workspace import open_workspace


@task(name="monitor", retries=2, retry_delay_seconds=5, retry_condition_fn=transient)
def monitor_task(
    root: str, dataset: str | None, since: str | None, last: int | None
) -> dict[str, Any]:
    from pipelines.datasets import resolve_dataset
    from pipelines.monitor import monitor, parse_since, summary_markdown

    ws = open_workspace(root)
    params = load_params(ws.params_path)
    with Store.open(ws.database_url) as store:
        name = resolve_dataset(store, dataset)
        result = monitor(
            ws, store, params, name=name, since=parse_since(since) if since else None, last=last
        )
    s = result.summary
    log = get_run_logger()
    log.info(
        "drift report %s on %s: %d rows, drifted %s",
        result.report.id, name, s["rows"], ", ".join(s["drifted"]) or "none",
    )  # fmt: skip
    for reason in result.reasons:
        log.warning("alert: %s", reason)
    create_markdown_artifact(
        key="monitor-" + re.sub(r"[^a-z0-9-]+", "-", name.lower()),
        markdown=summary_markdown(s, result.reasons),
        description=f"Monitor run of {name}",
    )  # fmt: skip
    return {**s, "reasons": result.reasons, "alerts": result.alerts, "html": str(result.html)}


@flow(name="mlops-monitor", log_prints=True)
def monitor_flow(
    workspace: str = ".",
    dataset: str | None = None,
    since: str | None = None,
    last: int | None = None,
) -> dict[str, Any]:
    """Monitor served traffic of one model: the window since `since` (30m, 6h, 2d) or the
    newest `last` rows (default: monitor.window_rows)."""
    return monitor_task(workspace, dataset, since, last)
