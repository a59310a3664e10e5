"""Release commands: package, serve, promote, rollout, rollback; the review queue; the
prediction log."""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any

import typer

from mlops.cli.common import (
    JsonOption,
    console,
    open_store,
    print_json,
    print_table,
    short_time,
    workspace,
)
from mlops.cli.train import actor
from mlops.errors import MlopsError
from mlops.settings import Workspace
from mlops.store import Store

review_app = typer.Typer(help="Disagreements between production and a canary or shadow.",
                         no_args_is_help=True)  # fmt: skip
predictions_app = typer.Typer(help="The prediction log (every answered request).",
                              no_args_is_help=True)  # fmt: skip


def package(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="The version, NAME:VERSION."),
    no_bento: bool = typer.Option(False, "--no-bento", help="Only the BentoML model store."),
) -> None:
    """Put a version in the BentoML model store and build its bento; again: reuses both."""
    ws = workspace(ctx)
    with open_store(ws) as store:
        done = _package(store, ws, ref, bento=not no_bento)
    what = "reused" if done.reused else "packaged"
    bento = done.package.bento_tag or "(no bento)"
    console.print(
        f"[green]{what}[/] {done.record.ref}: model {done.package.model_tag}, bento {bento}"
    )


def _package(store: Store, ws: Workspace, ref: str | int, *, bento: bool = True) -> Any:
    from mlops.settings import configure_environment
    from serving.package import package_version

    configure_environment(ws)
    with console.status(f"packaging {ref} (BentoML model store, bento)"):
        return package_version(store, ws, ref, bento=bento)


def serve(
    ctx: typer.Context,
    model: str = typer.Option(None, "--model", help="Model name (default: the only one)."),
    port: int = typer.Option(None, "--port", help="Default: serve.port in params.yaml."),
    workers: int = typer.Option(None, "--workers", help="Default: serve.workers."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
) -> None:
    """Serve the model's deployment state over HTTP with BentoML (POST /predict; OpenAPI at /);
    promote, rollout and rollback take effect without a restart."""
    from mlops.params import load_params
    from mlops.settings import configure_environment
    from pipelines.datasets import resolve_dataset
    from serving import server_env

    ws = workspace(ctx)
    serve_params = load_params(ws.params_path).serve
    with open_store(ws) as store:
        name = model or resolve_dataset(store)
        if not store.list_models(name):
            raise MlopsError(f"no model named {name!r}: train one first (`mlops run`)")
        state = store.deployment_state(name)
        if state is None or state.production_version_id is None:
            console.print(
                f"[yellow]{name} has no production version yet[/]: /readyz stays false until "
                f"`mlops promote {name}:VERSION`"
            )
    configure_environment(ws)
    env = server_env(ws, name, workers=workers or serve_params.workers)
    bentoml = shutil.which("bentoml", path=os.path.dirname(sys.executable)) or "bentoml"
    argv = [bentoml, "serve", "serving.service:MlopsService", "--host", host,
            "--port", str(port or serve_params.port)]  # fmt: skip
    console.print(f"serving {name} on http://{host}:{port or serve_params.port} (Ctrl+C stops)")
    sys.stdout.flush()
    os.execve(argv[0], argv, env)  # noqa: S606 - the CLI becomes the server: signals go straight to it


def promote(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="The staged version, NAME:VERSION."),
    reason: str = typer.Option("", "--reason", help="Why: kept in the audit."),
) -> None:
    """Package a staged version and make it production; servers swap within serve.poll_s."""
    from pipelines.gate import promote as promote_stage

    ws = workspace(ctx)
    with open_store(ws) as store:
        _package(store, ws, ref)
        before = store.production_model(store.get_model(ref).name)
        record = promote_stage(store, ref, "production", reason=reason, actor=actor())
    was = f" (was {before.ref}, now archived)" if before else ""
    console.print(f"[green]{record.ref}[/] is production{was}")


def rollout(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="The version, NAME:VERSION (or NAME with --clear)."),
    canary: float = typer.Option(None, "--canary", help="Percent of traffic, 0 < N < 100."),
    shadow: bool = typer.Option(False, "--shadow", help="A copy of every request, unanswered."),
    clear: str = typer.Option(None, "--clear", help="Stop the canary or the shadow of NAME."),
    progressive: bool = typer.Option(
        False,
        "--progressive",
        help="Canary at each of rollout.steps, compare, promote or roll back.",
    ),
    reason: str = typer.Option("", "--reason", help="Why: kept in the audit."),
) -> None:
    """Send a share of traffic to a staged version (--canary 10), or a copy of all of it
    (--shadow); --clear canary|shadow stops either; --progressive walks rollout.steps and
    promotes the version or rolls it back by the numbers. A request id (or X-Client-ID) always
    lands on the same side."""
    ws = workspace(ctx)
    chosen = sum(
        x is not None and x is not False
        for x in (canary, shadow or None, clear, progressive or None)
    )
    if chosen != 1:
        raise MlopsError(
            "give exactly one of --canary PERCENT, --shadow, --progressive or --clear canary|shadow"
        )
    if progressive:
        _progressive(ws, ref)
        return
    with open_store(ws) as store:
        if clear:
            name = ref.split(":")[0]
            state = store.clear_deployment(name, clear, actor=actor())
            console.print(f"[green]{name}[/]: {clear} cleared (revision {state.revision})")
            return
        _package(store, ws, ref)
        if canary is not None:
            if not 0 < canary < 100:
                raise MlopsError(f"--canary is a percentage between 0 and 100, got {canary:g}")
            state = store.set_canary(ref, canary / 100.0, actor=actor(), reason=reason)
            console.print(
                f"[green]{ref}[/] takes {canary:g}% of traffic (revision {state.revision})"
            )
        else:
            state = store.set_shadow(ref, actor=actor(), reason=reason)
            console.print(f"[green]{ref}[/] shadows production (revision {state.revision})")


def _progressive(ws: Workspace, ref: str) -> None:
    from mlops.params import load_params
    from pipelines.rollout import progressive_rollout

    params = load_params(ws.params_path)
    with open_store(ws) as store:
        _package(store, ws, ref)
        result = progressive_rollout(
            ws, store, params, ref, say=lambda line: console.print(line, markup=False)
        )
    if result.outcome != "promoted":
        raise MlopsError(f"{result.candidate} rolled back: {result.reason}")


@review_app.command("list")
def review_list(
    ctx: typer.Context,
    name: str = typer.Argument(None, help="Only this model name."),
    show_all: bool = typer.Option(False, "--all", help="Resolved ones too."),
    limit: int = typer.Option(50, "--limit", help="At most this many (oldest first)."),
    request_id: list[str] = typer.Option(
        [], "--request-id", help="Only this request's (the X-Request-ID); repeatable."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Requests where production and a canary or shadow answered differently: the inputs and
    both answers, waiting for an engineer's label."""
    ws = workspace(ctx)
    with open_store(ws) as store:
        reviews = store.list_reviews(
            name, status=None if show_all else "open", limit=limit, request_ids=request_id
        )
        refs = {m.id: m.ref for m in store.list_models(name)}
    if as_json:
        print_json([r.to_dict() for r in reviews])
        return
    if not reviews:
        console.print("no open reviews")
        return
    print_table(
        f"{len(reviews)} review(s)",
        ["id", "when", "route", "production says", "other says", "inputs", "status"],
        [
            [r.id, short_time(r.created_at), r.route,
             f"{refs.get(r.production_version_id)}: {_answer(r.production_output)}",
             f"{refs.get(r.other_version_id)}: {_answer(r.other_output)}",
             ", ".join(f"{k}={v}" for k, v in r.inputs.items()), r.status]
            for r in reviews
        ],
    )  # fmt: skip


def _answer(output: dict[str, Any]) -> str:
    p = output.get("probability")
    return f"{output.get('prediction')}" + (f" (p={p:.2f})" if p is not None else "")


@review_app.command("resolve")
def review_resolve(
    ctx: typer.Context,
    review_id: int = typer.Argument(..., help="The review's id (see `mlops review list`)."),
    label: str = typer.Option(..., "--label", help="The true value, as the data set writes it."),
) -> None:
    """Record the engineer's decision: it becomes the record's label, which monitoring joins
    to the prediction log."""
    ws = workspace(ctx)
    with open_store(ws) as store:
        review = next((r for r in store.list_reviews(status=None) if r.id == review_id), None)
        if review is None:
            raise MlopsError(f"no review {review_id} (see `mlops review list --all`)")
        _check_label(store, ws, review.model_name, label)
        stored = store.resolve_review(review_id, label, actor=actor())
    console.print(
        f"[green]review {review_id} resolved[/]: label {stored.value!r} for request "
        f"{stored.request_id} record {stored.record}"
    )


def _check_label(store: Store, ws: Workspace, name: str, label: str) -> None:
    """A classification label must be one of the model's classes; a regression one a number."""
    from pipelines.artifact import model_folder, read_manifest

    model = store.production_model(name) or max(store.list_models(name), key=lambda m: m.version)
    output = (read_manifest(model_folder(ws.version_dir(model.path))).get("schema") or {}).get(
        "output", {}
    )
    if output.get("task") == "regression":
        try:
            float(label)
        except ValueError:
            raise MlopsError(
                f"--label: {label!r} is not a number (the target is numeric)"
            ) from None
        return
    classes = output.get("classes")
    if classes and label not in {str(c) for c in classes}:
        raise MlopsError(f"--label: {label!r} is not one of the classes {classes}")


@predictions_app.command("tail")
def predictions_tail(
    ctx: typer.Context,
    n: int = typer.Option(20, "-n", help="How many rows."),
    model: str = typer.Option(None, "--model", help="Only this model name."),
    as_json: bool = JsonOption,
) -> None:
    """The latest rows of the prediction log: one per served record (shadow answers included,
    route 'shadow')."""
    from mlops.predictions import read_log

    ws = workspace(ctx)
    frame = read_log(ws.predictions_dir, model, last=n)
    if as_json:
        print_json(frame.assign(ts=frame["ts"].astype(str)).to_dict(orient="records"))
        return
    if frame.empty:
        console.print("the prediction log is empty: nothing has been served yet")
        return
    print_table(
        f"last {len(frame)} prediction(s)",
        ["time", "request", "#", "version", "route", "prediction", "score", "ms"],
        [
            [short_time(r.ts), r.request_id, r.record, f"{r.model}:{r.version}", r.route,
             r.prediction, r.score, r.latency_ms]
            for r in frame.itertuples()
        ],
    )  # fmt: skip
