"""Open-loop load at a fixed rate, for bench_serving.py (wrk cannot hold a rate).

Request i is due at start + i / rate whether or not earlier ones have been answered, and its
latency is counted from when it was due, so a server that falls behind shows it in the
percentiles (no coordinated omission). Prints one JSON line:

    python benchmarks/serving_load/openloop.py --url http://127.0.0.1:3000/predict \
        --body body.json --rate 200 --duration 10 [--warmup 1]

`lag_p99_ms` is how late this client itself sent its requests: if it is more than a few
milliseconds, the client, not the server, could not keep the rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
import numpy as np


async def _run(args: argparse.Namespace) -> dict[str, object]:
    body = Path(args.body).read_bytes()
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=args.connections)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    loop = asyncio.get_running_loop()
    latencies: list[tuple[float, float]] = []  # (due, latency s) of 2xx answers after warm-up
    lags: list[float] = []
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    total = round(args.rate * (args.warmup + args.duration))

    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, headers=headers
    ) as session:

        async def one(due: float, counted: bool) -> None:
            try:
                async with session.post(args.url, data=body) as resp:
                    await resp.read()
                    status = resp.status
            except Exception as exc:  # a socket error or a timeout: counted, not raised
                if counted:
                    errors[type(exc).__name__] += 1
                return
            if not counted:
                return
            if 200 <= status < 300:
                latencies.append((due, loop.time() - due))
            else:
                statuses[str(status)] += 1

        start = loop.time() + 0.05
        tasks = []
        for i in range(total):
            due = start + i / args.rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            counted = i / args.rate >= args.warmup
            if counted:
                lags.append(loop.time() - due)
            tasks.append(asyncio.create_task(one(due, counted)))
        await asyncio.gather(*tasks)
        wall = loop.time() - start

    lat = np.asarray([x for _, x in latencies]) * 1000.0
    due = np.asarray([d for d, _ in latencies]) - start - args.warmup
    windows = []
    for w0 in np.arange(0.0, args.duration, args.window):
        sel = lat[(due >= w0) & (due < w0 + args.window)]
        windows.append(round(float(np.percentile(sel, 99)), 2) if len(sel) else None)
    sent = total - round(args.rate * args.warmup)

    def pct(q: float) -> float | None:
        return round(float(np.percentile(lat, q)), 2) if len(lat) else None

    return {
        "rate": args.rate,
        "duration_s": args.duration,
        "wall_s": round(wall, 2),
        "sent": sent,
        "ok": len(lat),
        "non2xx": sum(statuses.values()),
        "statuses": dict(statuses),
        "socket_errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "max_ms": round(float(lat.max()), 2) if len(lat) else None,
        "lag_p99_ms": round(float(np.percentile(lags, 99)) * 1000.0, 2) if lags else None,
        "window_s": args.window,
        "window_p99_ms": windows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--body", required=True, help="file with the JSON request body")
    ap.add_argument("--rate", type=float, required=True, help="requests per second")
    ap.add_argument("--duration", type=float, required=True, help="seconds measured")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds sent but not counted")
    ap.add_argument("--window", type=float, default=10.0, help="seconds per p99 window")
    ap.add_argument("--connections", type=int, default=256)
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds; later is an error")
    args = ap.parse_args()
    try:
        from uvloop import run  # the faster event loop, where installed
    except ImportError:
        run = asyncio.run
    t0 = time.perf_counter()
    out = run(_run(args))
    out["client_s"] = round(time.perf_counter() - t0, 2)
    print("OPENLOOP_JSON " + json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
