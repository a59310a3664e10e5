"""`mlops train`, `mlops models ...` and the hidden `mlops stage ...` commands DVC runs."""

from __future__ import annotations

import getpass
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:  # only for annotations: the CLI imports the pipelines lazily
    from mlops.params import Params
    from mlops.settings import Workspace
    from pipelines.pipeline import Artifacts

from mlops.cli.common import (
    JsonOption,
    console,
    err_console,
    open_store,
    print_json,
    print_table,
    short_time,
    workspace,
)

stage_app = typer.Typer(
    help="The DVC pipeline's stage commands (dvc.yaml runs them).", no_args_is_help=True
)
models_app = typer.Typer(help="Model versions: list, show, promote.", no_args_is_help=True)


def train(
    ctx: typer.Context,
    overrides: list[str] = typer.Option(
        None, "--set", help="Override a parameter, written into params.yaml: section.key=value."
    ),
    device: str = typer.Option(None, "--device", help="auto, cpu or cuda (sets train.device)."),
    # A string, checked with the other params: a bad value is one line, not a usage screen.
    nproc: str = typer.Option(
        None,
        "--nproc",
        metavar="N",
        help="Train with N processes, torch DDP: gloo on CPU, NCCL with a GPU each "
        "(sets train.nproc).",
    ),
    dataset: str = typer.Option(
        None, "--dataset", help="Data set to train on (default: the workspace's data set)."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Train on the validated batches with `dvc repro`, register the model, run the gate."""
    from pipelines.registry import train_and_register

    ws = workspace(ctx)
    with open_store(ws) as store:
        record = train_and_register(
            ws,
            store,
            [*(overrides or []), *([f"train.nproc={nproc}"] if nproc is not None else [])],
            dataset=dataset,
            device=device,
            echo=None
            if as_json
            else (lambda msg: err_console.print(msg, highlight=False, markup=False)),
        )
    if as_json:
        print_json(record.to_dict())
        return
    print_search(record.lineage.get("search"))
    m = record.metrics
    name = m.get("primary_metric", "")
    console.print(
        f"[bold]{record.ref}[/] -> [bold]{record.stage}[/]  {name}={_fmt(m.get(name))} "
        f"(baseline {_fmt(m.get('baseline', {}).get(name))}, "
        f"trivial {_fmt(m.get('trivial', {}).get(name))}){_positive(m)}",
        highlight=False,
    )
    if record.decision.get("reason"):
        console.print(f"  gate: {record.decision['reason']}", highlight=False)
    if record.decision.get("next") and record.stage != "production":
        console.print(f"  next: {record.decision['next']}", highlight=False)


def print_search(search: dict[str, Any] | None) -> None:
    """The candidates `train.search` tried, their validation scores and the one chosen."""
    if not search:
        return
    metric = search["metric"]
    rows = [
        [r["candidate"] + 1, r["overrides"], _fmt(r[f"val_{metric}"]), _fmt(r["val_loss"]),
         r["best_epoch"], r["seconds"], "chosen" if r["chosen"] else ""]
        for r in search["table"]
    ]  # fmt: skip
    cached = " (scored earlier on the same data)" if search.get("cached") else ""
    print_table(
        f"search: {len(rows)} candidates on the val split{cached}",
        ["#", "overrides", f"val {metric}", "val loss", "best epoch", "seconds", ""],
        rows,
    )


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _positive(metrics: dict[str, Any]) -> str:
    """'; positive class X' for binary classification metrics, else nothing."""
    pos = metrics.get("positive_class")
    return f"; positive class {pos!r}" if pos is not None else ""


# -- stages (dvc.yaml) ----------------------------------------------------------------------


def _stage_inputs(ctx: typer.Context) -> tuple[Workspace, Params, Artifacts]:
    """What every stage command starts from: the workspace, its params, the artifact paths."""
    from mlops.params import load_params
    from pipelines.pipeline import Artifacts

    ws = workspace(ctx)
    return ws, load_params(ws.params_path), Artifacts(ws.root)


@stage_app.command("prepare")
def stage_prepare(ctx: typer.Context) -> None:
    """Join the selected batches, split them, fit the preprocessor."""
    from pipelines.prepare import run_prepare_stage

    ws, params, art = _stage_inputs(ctx)
    data = run_prepare_stage(ws.root, art.selection, art.prepared, params.prepare)
    console.print(
        f"prepared train/val/test = {len(data.train)}/{len(data.val)}/{len(data.test)} rows"
    )


@stage_app.command("train")
def stage_train(ctx: typer.Context) -> None:
    """Train the MLP (resuming from a checkpoint of this same run, if one exists); with
    train.nproc > 1, in that many DDP processes (no checkpoints)."""
    from pipelines.pipeline import checkpoint_dir
    from pipelines.prepare import load_prepared
    from pipelines.train import run_train_stage

    ws, params, art = _stage_inputs(ctx)
    if params.train.nproc > 1:
        from pipelines.ddp import launch

        info = launch(
            art.prepared,
            params.train,
            model_dir=art.model,
            curve_csv=art.plots / "train_curve.csv",
            curve_png=art.train_curve_png,
            info_path=art.train_info,
        )
        console.print(
            f"trained on {info['nproc']} x {info['device']} ({info['backend']}) in "
            f"{info['duration_s']:.1f}s: best epoch {info['best_epoch']}, "
            f"val loss {info['best_val_loss']:.4f}"
        )
        return
    result = run_train_stage(
        load_prepared(art.prepared),
        params.train,
        model_dir=art.model,
        curve_csv=art.plots / "train_curve.csv",
        curve_png=art.train_curve_png,
        info_path=art.train_info,
        checkpoint_dir=checkpoint_dir(ws),
    )
    resumed = f", resumed at epoch {result.resumed_from_epoch}" if result.resumed_from_epoch else ""
    console.print(
        f"trained on {result.device} in {result.duration_s:.1f}s: best epoch {result.best_epoch}, "
        f"val loss {result.best_val_loss:.4f}{resumed}"
    )


@stage_app.command("evaluate")
def stage_evaluate(ctx: typer.Context) -> None:
    """Score the model and the baseline on the test split."""
    from pipelines.evaluate import run_evaluate_stage

    _, params, art = _stage_inputs(ctx)
    report = run_evaluate_stage(art.prepared, art.model, art.metrics, art.plots, params.evaluate)
    name = report["primary_metric"]
    console.print(
        f"test {name}: model {_fmt(report['model'][name])}, "
        f"baseline {_fmt(report['baseline'][name])}"
    )


# -- models ---------------------------------------------------------------------------------


@models_app.command("list")
def models_list(
    ctx: typer.Context,
    name: str = typer.Option(None, "--name", help="Only this model name."),
    stage: str = typer.Option(None, "--stage", help="Only this stage."),
    as_json: bool = JsonOption,
) -> None:
    """List model versions with their stage and primary metric."""
    ws = workspace(ctx)
    with open_store(ws) as store:
        models = store.list_models(name=name, stage=stage)
    if as_json:
        print_json([m.to_dict() for m in models])
        return
    rows = []
    for m in models:
        metric = m.metrics.get("primary_metric", "")
        rows.append(
            [
                m.ref,
                m.stage,
                m.runtime,
                m.method.get("kind", ""),
                metric,
                _fmt(m.metrics.get("positive_class", "")),
                _fmt(m.metrics.get(metric)),
                _fmt(m.metrics.get("baseline", {}).get(metric)),
                len(m.batch_ids),
                short_time(m.created_at),
            ]
        )
    print_table(
        f"{len(models)} model version(s)",
        [
            "version",
            "stage",
            "runtime",
            "kind",
            "metric",
            "positive class",
            "value",
            "baseline",
            "batches",
            "created",
        ],
        rows,
    )


_VARIANT_COLUMNS = (
    "variant",
    "status",
    "runtime",
    "hidden",
    "size_bytes",
    "latency_b1_us",
    "latency_b64_us",
    "pr_auc",
    "rmse",
    "drop",
    "agreement",
    "reason",
)


@models_app.command("show")
def models_show(ctx: typer.Context, ref: str, as_json: bool = JsonOption) -> None:
    """Show one model version: metrics, gate decision, full lineage, stage history."""
    ws = workspace(ctx)
    with open_store(ws) as store:
        m = store.get_model(ref)
        history = store.stage_history(m.id)
    if as_json:
        print_json({**m.to_dict(), "ref": m.ref, "stage_history": [e.to_dict() for e in history]})
        return
    p = console.print
    p(f"[bold]{m.ref}[/]  stage [bold]{m.stage}[/]  runtime {m.runtime}  data set {m.dataset}")
    p(f"path: {ws.version_dir(m.path)}", highlight=False)
    p(f"created: {short_time(m.created_at)}  run: {m.run_id}  parent: {m.parent_id}")
    metric = m.metrics.get("primary_metric")
    if metric:
        numbers = [
            k
            for k in (
                "pr_auc",
                "roc_auc",
                "f1",
                "precision",
                "recall",
                "accuracy",
                "rmse",
                "mae",
                "r2",
            )
            if k in m.metrics
        ]
        print_table(
            f"test metrics (primary: {metric}{_positive(m.metrics)})",
            ["metric", "model", "baseline", "trivial"],
            [
                [
                    k,
                    _fmt(m.metrics[k]),
                    _fmt(m.metrics.get("baseline", {}).get(k)),
                    _fmt(m.metrics.get("trivial", {}).get(k)),
                ]
                for k in numbers
            ],
        )
        if "confusion_matrix" in m.metrics:
            p(
                f"confusion matrix (rows actual, columns predicted; classes "
                f"{m.metrics.get('classes')}): {m.metrics['confusion_matrix']}"
            )
    if m.decision:
        p("[bold]gate decision[/]")
        for key, value in m.decision.items():
            if key not in ("reference_metrics",):
                p(f"  {key}: {value}", highlight=False)
        table = (m.lineage.get("compression") or {}).get("table")
        if isinstance(table, list) and table and isinstance(table[0], dict):
            cols = [c for c in _VARIANT_COLUMNS if c in table[0]]
            print_table("variants measured", cols, [[r.get(c) for c in cols] for r in table])
    lin = m.lineage
    p("[bold]lineage[/]")
    for b in lin.get("batches", []):
        v = b.get("validation") or {}
        p(
            f"  batch {b['id']}  rows={b.get('rows')}  dvc md5={b.get('dvc_md5')}  "
            f"validation {v.get('id')}: {v.get('outcome')} ({v.get('suite')})",
            highlight=False,
        )
    git = lin.get("git") or {}
    p(f"  git commit: {git.get('commit')}  dirty: {git.get('dirty')}")
    p(f"  dvc.lock sha256: {lin.get('dvc_lock_hash')}")
    for stage, outs in (lin.get("outs") or {}).items():
        p(f"  {stage}: " + ", ".join(f"{k} md5={v}" for k, v in outs.items()), highlight=False)
    p(
        f"  device: {lin.get('device')}  training duration: {lin.get('duration_s')} s  "
        f"best epoch: {lin.get('best_epoch')}  rows: {lin.get('rows')}"
    )
    p(f"  test split md5: {lin.get('test_split_md5')}")
    for section, values in (lin.get("params") or {}).items():
        p(f"  params.{section}: {values}", highlight=False)
    print_search(lin.get("search"))
    extra = {k: v for k, v in lin.items() if k not in _SHOWN}
    for key, value in extra.items():
        p(f"  {key}: {value}", highlight=False)
    p("[bold]stage history[/]")
    for e in history:
        p(
            f"  {short_time(e.created_at)}  {e.from_stage or '-'} -> {e.to_stage}  "
            f"({e.action or '-'})  {e.actor or ''}  {e.reason}",
            highlight=False,
        )


_SHOWN = {
    "search",
    "compression",
    "batches",
    "git",
    "dvc_lock_hash",
    "outs",
    "device",
    "duration_s",
    "best_epoch",
    "rows",
    "test_split_md5",
    "params",
}


@models_app.command("promote")
def models_promote(
    ctx: typer.Context,
    ref: str,
    to: str = typer.Option(..., "--to", help="production, staging or archived."),
    reason: str = typer.Option("", "--reason", help="Why: kept in the stage history."),
    override: bool = typer.Option(
        False, "--override", help="Overrule the gate (needs --reason; recorded as an override)."
    ),
) -> None:
    """Move a model version: staging -> production archives the previous production version.

    Only what the gate staged goes to production; a rejected, never-gated or archived version
    reaches staging or production only with --override --reason TEXT.
    """
    from pipelines.gate import promote

    ws = workspace(ctx)
    with open_store(ws) as store:
        before = store.get_model(ref)
        record = promote(store, ref, to, reason=reason, actor=actor(), override=override)
    how = " (override)" if override else ""
    console.print(f"[green]{record.ref}[/]: {before.stage} -> {record.stage}{how}")


@models_app.command("aliases")
def models_aliases(
    ctx: typer.Context,
    name: str = typer.Argument(None, help="Only this model name."),
    as_json: bool = JsonOption,
) -> None:
    """The named aliases (production, staging, canary, shadow): which version each points at."""
    ws = workspace(ctx)
    with open_store(ws) as store:
        aliases = store.list_aliases(name)
    if as_json:
        print_json([a.to_dict() for a in aliases])
        return
    print_table(
        f"{len(aliases)} alias(es)",
        ["model", "alias", "version", "since", "by"],
        [
            [a.model_name, a.alias, f"{a.model_name}:{a.version}", short_time(a.updated_at),
             a.updated_by]
            for a in aliases
        ],
    )  # fmt: skip


@models_app.command("verify")
def models_verify(
    ctx: typer.Context,
    refs: list[str] = typer.Argument(None, help="Versions to check (default: every version)."),
) -> None:
    """Check every file of model versions against the sha256 in their manifest; exits
    non-zero naming the first file that was changed or cut short."""
    from mlops.errors import MlopsError
    from pipelines.artifact import verify_model
    from pipelines.gate import model_dir

    ws = workspace(ctx)
    with open_store(ws) as store:
        models = [store.get_model(r) for r in refs] if refs else store.list_models()
    bad = []
    for m in models:
        try:
            manifest = verify_model(model_dir(ws, m))
        except MlopsError as exc:
            bad.append(f"{m.ref}: {exc}")
            continue
        console.print(f"[green]ok[/] {m.ref}: {len(manifest['files'])} file(s) match their sha256")
    if bad:
        more = f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""
        raise MlopsError(bad[0] + more)


@models_app.command("rollback")
def models_rollback(
    ctx: typer.Context,
    name: str = typer.Argument(None, help="Model name (default: the workspace's data set's)."),
    reason: str = typer.Option("", "--reason", help="Why: kept in the stage history."),
) -> None:
    """Put the previous production version back in production; the current one is archived."""
    from pipelines.datasets import resolve_dataset

    ws = workspace(ctx)
    with open_store(ws) as store:
        name = name or resolve_dataset(store)
        before = store.production_model(name)
        record = store.rollback(name, reason=reason or "rollback", actor=actor())
    was = f"{before.ref} archived, " if before else ""
    console.print(f"[green]rolled back[/] {name}: {was}{record.ref} in production")


def actor() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in some containers
        return "unknown"


def status(
    ctx: typer.Context,
    name: str = typer.Argument(None, help="Only this model name."),
    as_json: bool = JsonOption,
) -> None:
    """What serves what: per model name, production, canary (and its share) and shadow, since
    when and by whom, the revision, the last deployment change, and any version the servers
    refused to load since (failed checksum, smoke check or schema)."""
    ws = workspace(ctx)
    with open_store(ws) as store:
        states = [s for s in store.list_deployment_states() if name in (None, s.model_name)]
        refs = {m.id: m.ref for m in store.list_models(name=name)}
        events = {s.model_name: store.deployment_events(s.model_name) for s in states}
    last = {
        name: _last([e for e in evs if e.action != "swap-failed"]) for name, evs in events.items()
    }
    # What servers refused since the state last changed (a version that failed its checks).
    refused = {
        s.model_name: [e for e in events[s.model_name]
                       if e.action == "swap-failed" and e.revision == s.revision]
        for s in states
    }  # fmt: skip
    if as_json:
        print_json(
            [{**s.to_dict(), "last_event": (last[s.model_name].to_dict()
                                             if last[s.model_name] else None),
              "refused": [e.to_dict() for e in refused[s.model_name]]} for s in states]
        )  # fmt: skip
        return
    if not states:
        console.print("nothing deployed yet: `mlops models promote NAME:VERSION --to production`")
    else:
        _print_states(states, refs, last, refused)
    _print_schedules(ws)


def _print_schedules(ws: Any) -> None:
    """The loop's schedules and whether they fire, when any is set (`mlops schedule list`)."""
    from rich.text import Text

    from mlops.cli.loop import print_schedules, schedule_health
    from mlops.errors import MlopsError

    try:
        health = schedule_health(ws)
    except MlopsError as exc:
        console.print(Text(f"schedules: {exc}"))
        return
    if any(h.status != "off" for h in health):
        print_schedules(health)


def _print_states(states: list[Any], refs: dict[int, str], last: dict[str, Any],
                  refused: dict[str, list[Any]]) -> None:  # fmt: skip
    rows = []
    for s in states:
        event = last[s.model_name]
        rows.append(
            [
                s.model_name,
                refs.get(s.production_version_id or -1, "-"),
                f"{refs.get(s.canary_version_id)} ({s.canary_share:.0%})"
                if s.canary_version_id else "-",
                refs.get(s.shadow_version_id or -1, "-"),
                s.revision,
                f"{short_time(s.updated_at)} by {s.updated_by or '?'}",
                f"{event.action}: {event.reason}" if event else "",
                "; ".join(sorted({f"{refs.get(e.model_version_id or -1, '?')}: {e.reason}"
                                  for e in refused[s.model_name]})) or "-",
            ]
        )  # fmt: skip
    print_table(
        "deployment state",
        [
            "model",
            "production",
            "canary",
            "shadow",
            "revision",
            "changed",
            "last change",
            "refused by servers",
        ],
        rows,
    )


def _last(events: list[Any]) -> Any:
    return events[-1] if events else None
