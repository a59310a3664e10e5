"""ASGI middleware of the service: `BodyGuard` refuses a request body before BentoML parses it (a
content type other than JSON: 415; a body over the limit: 413), each with a one-line JSON error;
`RequestTimeout` replaces BentoML's request timeout (see there)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

ENV_BENTOML_TIMEOUT = "MLOPS_SERVE_BENTOML_TIMEOUT"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyGuard:
    def __init__(self, app: App, *, max_bytes: int, paths: tuple[str, ...]) -> None:
        self.app, self.max_bytes, self.paths = app, max_bytes, paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower().decode("latin-1")
        if ctype != "application/json":
            await _refuse(
                send,
                415,
                f"header 'Content-Type': must be application/json, got {ctype or 'none'!r}",
            )
            return
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await _refuse(
                send, 413, f"body: {int(length)} bytes is over the {self.max_bytes}-byte limit"
            )
            return
        # Read the body here (bounded), then hand it on: a chunked body has no length to check.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _refuse(send, 413, f"body: over the {self.max_bytes}-byte limit")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _refuse(send: Send, status: int, error: str) -> None:
    body = json.dumps({"error": error}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestTimeout:
    """BentoML's `traffic.timeout` (TimeoutMiddleware): a request not answered within `timeout`
    seconds gets a 504, as BentoML's does, but with its timer cancelled once the answer starts.

    BentoML 1.4.39's schedules a timer and a future per request and never cancels the timer, so
    each request's stay alive for the whole timeout: under 1,000 requests/s with a 30 s timeout,
    30,000 of each per worker (memory that grows for the first 30 s of any load, and a timer heap
    the event loop keeps sorting); it also runs every request in a task of its own. Measured in
    BENCHMARKS.md (serving, "What moved it")."""

    def __init__(self, app: App, timeout: float) -> None:
        self.app, self.timeout = app, timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        started = False
        deadline = asyncio.timeout(self.timeout)

        async def _send(message: Message) -> None:
            nonlocal started
            if not started:
                started = True
                with contextlib.suppress(RuntimeError):  # already expired: the 504 path
                    deadline.reschedule(None)  # answering: no longer a timeout to enforce
            await send(message)

        try:
            async with deadline:
                await self.app(scope, receive, _send)
        except TimeoutError:
            if started:
                raise
            await _refuse(send, 504, f"Not able to process the request in {self.timeout} seconds")


def replace_bentoml_timeout() -> bool:
    """Make BentoML build its apps with `RequestTimeout` in place of its TimeoutMiddleware (it
    imports the class when it assembles an app's middleware, after our service module loaded).
    False, and a warning, where this BentoML has no such class: its own then stays; False
    where MLOPS_SERVE_BENTOML_TIMEOUT=1 asks for BentoML's own (to measure the difference)."""
    if os.environ.get(ENV_BENTOML_TIMEOUT) == "1":
        return False
    try:
        traffic = importlib.import_module("bentoml._internal.server.http.traffic")
    except ImportError:
        traffic = None
    if not hasattr(traffic, "TimeoutMiddleware"):
        logging.getLogger("mlops.serving").warning(
            "BentoML's TimeoutMiddleware was not found: its own request timeout stays"
        )
        return False
    setattr(traffic, "TimeoutMiddleware", RequestTimeout)  # noqa: B010 (a module attribute)
    return True
