"""Benchmarks of serving on Ray Serve against the same app on plain uvicorn, ratios from one run.

    flock /tmp/driftloop-heavy.lock .venv/bin/python bench/bench_serve.py   # ~6 minutes, 2 cores

Goals (issue #10), all over HTTP on 127.0.0.1 with the same client: single-record requests at 32
concurrent clients >= 0.5x the req/s of the same FastAPI app on plain uvicorn (Serve with
RAY_SERVE_THROUGHPUT_OPTIMIZED=1: direct ingress, the client on the replica's own port, found
through the controller); added median latency at 1 client <= 2 ms; 1,000-record requests at
>= 0.5x the rows/s of the same model in-process. Reported beside them: p50/p99 of each arm, the
Serve proxy port (port 8000's path), batched vs unbatched, int8 vs float32.

Goal (issue #21): 1,000-record requests as Arrow IPC both ways >= 0.8x the rows/s in-process.

Goals (issue #19, bench/serve_log.py): the durable prediction log costs <= 10% of req/s at 32
clients and <= +0.5 ms median at 1 client against the buffered log it replaced; a /feedback
look-up with 1M rows logged takes <= 1.5x its median with 10k. Writes bench/results/serve.json;
the last lines say PASS or MISS per goal.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import Row, Run, judge
from serve_log import SIZES, BufferedLog, compact_all, feedback_latency, fill_log

from tasks import registry
from tasks.model import ModelSpec, Preprocessor, TabularMLP, save_model
from tasks.serve.arrow import ARROW
from tasks.serve.arrow import write as arrow_write
from tasks.settings import Features, ServingConfig, TrainingConfig

MODEL = "bench"
NUMERIC = [f"x{i}" for i in range(12)]
CATEGORICAL = [f"c{i}" for i in range(4)]  # 16 features, as STACK.md's bare measurement


# The model -------------------------------------------------------------------------------------


def table(rows: int, *, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    columns: dict[str, Any] = {n: rng.normal(0, 1, rows) for n in NUMERIC}
    columns |= {c: rng.choice(["a", "b", "c", "d"], rows) for c in CATEGORICAL}
    columns["y"] = (columns["x0"] + rng.normal(0, 1, rows) > 0).astype(np.int64)
    return pa.table(columns)


def make_home() -> str:
    home = tempfile.mkdtemp(prefix="dl-bench-serve-")
    features = Features(numeric=NUMERIC, categorical=CATEGORICAL)
    pre = Preprocessor.fit(
        table(2_000, seed=0), features=features, target="y", task="classification"
    )
    spec = ModelSpec.build(pre, TrainingConfig())  # the default 128-64 MLP
    torch.manual_seed(0)
    saved = save_model(Path(home) / "m", model=TabularMLP(spec), spec=spec, preprocessor=pre)
    version = registry.register(root=home, model=MODEL, model_dir=str(saved), metadata={})
    registry.set_alias(root=home, model=MODEL, alias="champion", version=version, reason="bench")
    return home


def body(rows: int, *, seed: int) -> bytes:
    records = table(rows, seed=seed).drop_columns(["y"]).to_pylist()
    return json.dumps({"records": records}).encode()


def arrow_body(rows: int, *, seed: int) -> bytes:
    return arrow_write(table(rows, seed=seed).drop_columns(["y"]))


# The client: aiohttp, keep-alive connections, one per concurrent client -------------------------


async def _load(
    url: str, payload: bytes, *, clients: int, seconds: float, arrow: bool = False
) -> dict[str, float]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=clients)
    headers = {"Content-Type": "application/json"}
    if arrow:  # Arrow IPC both ways (tasks/serve/arrow.py)
        headers = {"Content-Type": ARROW, "Accept": ARROW}
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            nonlocal errors
            for _ in range(1_000_000):  # bounded by count and by `seconds`
                if time.perf_counter() > deadline:
                    return
                started = time.perf_counter()
                async with session.post(url, data=payload, headers=headers) as answer:
                    await answer.read()
                    if answer.status != 200:
                        errors += 1
                        continue
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - began
    ms = sorted(x * 1e3 for x in latencies)
    return {
        "requests_per_s": len(ms) / elapsed,
        "p50_ms": ms[len(ms) // 2] if ms else float("nan"),
        "p99_ms": ms[int(len(ms) * 0.99)] if ms else float("nan"),
        "requests": len(ms),
        "errors": errors,
    }


def load(
    url: str, payload: bytes, *, clients: int, seconds: float, arrow: bool = False
) -> dict[str, float]:
    asyncio.run(_load(url, payload, clients=clients, seconds=1.0, arrow=arrow))  # warm up
    return asyncio.run(_load(url, payload, clients=clients, seconds=seconds, arrow=arrow))


def wait_ready(url: str, timeout_s: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer /healthz")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# The arms ----------------------------------------------------------------------------------------


def plain_server(home: str, port: int, *, quantize: bool, buffered: bool) -> None:
    """`--plain`: the same FastAPI app (tasks.serve.make_api) on uvicorn, one process; with
    `buffered`, the log before issue #19 (serve_log.BufferedLog) in place of the durable one."""
    import uvicorn

    from tasks.serve import Service, make_api

    torch.set_num_threads(1)  # as a 1-CPU replica
    serving = ServingConfig(quantize_int8=quantize)
    service = Service(home=home, model=MODEL, serving=serving)
    if buffered:
        service.log.close()
        service.log = BufferedLog(home=home, model=MODEL, serving=serving)  # type: ignore[assignment]
    service.load(1)
    uvicorn.run(
        make_api(service), host="127.0.0.1", port=port, log_level="warning", access_log=False
    )


def start_plain(
    home: str, *, quantize: bool = False, buffered: bool = False
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    args = [sys.executable, __file__, "--plain", home, str(port)]
    args += (["--int8"] if quantize else []) + (["--buffered"] if buffered else [])
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url)
    return process, url


def replica_url(app: str, *, proxy_port: int) -> str:
    """The replica's own HTTP port under direct ingress: the controller's target groups (no
    public API; `ray.serve._private.test_utils.get_application_urls` reads the same)."""
    from ray.serve._private.test_utils import get_application_urls

    urls = get_application_urls(app_name=app, use_localhost=False)
    direct = [u for u in urls if f":{proxy_port}/" not in f"{u}/"]
    if not direct:
        raise RuntimeError(f"no replica port among {urls}: is direct ingress on?")
    return direct[0].replace("localhost", "127.0.0.1")


def deploy(home: str, *, name: str, proxy_port: int, **serving: Any) -> str:
    from ray import serve

    from tasks.serve import ServeArgs, bind_app, load_version

    args = ServeArgs(
        home=home,
        model=MODEL,
        serving=ServingConfig(port=proxy_port, max_ongoing_requests=64, **serving),
    )
    serve.run(bind_app(args, version=1, loader=load_version), name=name, route_prefix=f"/{name}")
    return replica_url(name, proxy_port=proxy_port)


def in_process(payload_rows: int) -> dict[str, float]:
    """The same model on the same 1,000 records in this process: records -> table -> predict."""
    from tasks.model import load_model

    home = make_home()
    predictor = load_model(registry.resolve(root=home, model=MODEL, ref="champion"))
    records = table(payload_rows, seed=3).drop_columns(["y"]).to_pylist()
    times = []
    for _ in range(30):
        started = time.perf_counter()
        predictor.predict(pa.Table.from_pylist(records))
        times.append(time.perf_counter() - started)
    return {
        "rows_per_s": payload_rows / statistics.median(times),
        "ms": statistics.median(times) * 1e3,
    }


# The run -----------------------------------------------------------------------------------------


def run(seconds: float, *, reps: int) -> dict[str, Any]:
    """Every arm runs at once (idle ones cost nothing); each measurement is taken arm after arm,
    `reps` rounds, medians kept: the load other jobs put on the machine hits every arm alike."""
    os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"  # before Ray starts: replicas inherit it
    os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = "0"  # no 30 s drain at the end
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    token = Path(tempfile.mkdtemp(prefix="dl-bench-ray-")) / "auth_token"  # not ~/.ray's
    token.write_text(os.urandom(32).hex())
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)
    import ray
    from ray import serve

    home = make_home()
    payloads = {
        "c32": (body(1, seed=1), 32),
        "c1": (body(1, seed=1), 1),
        "rows1000": (body(1_000, seed=2), 2),
        "arrow1000": (arrow_body(1_000, seed=2), 2),
    }
    out: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "load": os.getloadavg()}}
    plain, plain_url = start_plain(home)
    plain8, plain8_url = start_plain(home, quantize=True)
    buffered, buffered_url = start_plain(home, buffered=True)
    urls = {"plain": plain_url, "plain_int8": plain8_url, "plain_buffered": buffered_url}
    try:
        ray.init(address="local", include_dashboard=False, log_to_driver=False, num_cpus=4)
        proxy_port = free_port()
        serve.start(
            http_options={"host": "127.0.0.1", "port": proxy_port},
            logging_config={"log_level": "WARNING"},
        )
        arms = {
            "serve": {},
            "serve_batched": {"batching": True},
            "serve_int8": {"quantize_int8": True},
        }
        for label, serving in arms.items():
            urls[label] = deploy(home, name=label, proxy_port=proxy_port, **serving)
            wait_ready(urls[label])
        urls["serve_proxy"] = f"http://127.0.0.1:{proxy_port}/serve"
        runs: dict[str, dict[str, list[dict[str, float]]]] = {a: {} for a in urls}
        for _ in range(reps):
            for kind, (payload, clients) in payloads.items():
                for arm, url in urls.items():
                    if arm == "serve_proxy" and kind in ("rows1000", "arrow1000"):
                        continue
                    m = load(f"{url}/predict", payload, clients=clients, seconds=seconds,
                             arrow=kind == "arrow1000")  # fmt: skip
                    runs[arm].setdefault(kind, []).append(m)
        for arm, kinds in runs.items():
            out[arm] = {"url": urls[arm]} | {kind: _median(ms) for kind, ms in kinds.items()}
        serve.shutdown()
        ray.shutdown()
    finally:
        for process in (plain, plain8, buffered):
            process.terminate()
            process.wait(timeout=30)
    out["in_process"] = in_process(1_000)
    out["machine"]["load_after"] = os.getloadavg()
    return out


def feedback_run(*, rounds: int, requests: int) -> dict[str, Any]:
    """/feedback latency on logs of each of `SIZES` (both servers up, measured in turns), then
    on the largest after compaction."""
    features = table(10_000, seed=5).drop_columns(["y"])
    homes = {size: make_home() for size in SIZES}
    ids = {s: fill_log(h, model=MODEL, rows=SIZES[s], features=features, seed=7)
           for s, h in homes.items()}  # fmt: skip
    servers = {size: start_plain(home) for size, home in homes.items()}
    runs: dict[str, dict[str, list[dict[str, float]]]] = {}
    try:

        def measure(arm: str, size: str, seed: int) -> None:
            url = servers[size][1]
            one = feedback_latency(url, ids[size], labels=1, requests=requests, seed=seed)
            many = feedback_latency(url, ids[size], labels=100, requests=requests // 5, seed=seed)
            runs.setdefault(arm, {}).setdefault("labels1", []).append(one)
            runs[arm].setdefault("labels100", []).append(many)

        for r in range(rounds):
            for size in SIZES:
                measure(size, size, seed=r)
        largest = list(SIZES)[-1]
        compact_all(homes[largest], model=MODEL)
        for r in range(rounds):
            measure(f"{largest}_compacted", largest, seed=r)
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=30)
    return {arm: {kind: _median(ms) for kind, ms in kinds.items()} for arm, kinds in runs.items()}


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def goal_rows(out: dict[str, Any]) -> list[Row]:
    serve_, plain = out["serve"], out["plain"]
    return [
        judge(
            "Serve / uvicorn req/s, 1 record, 32 clients",
            value=serve_["c32"]["requests_per_s"],
            baseline=plain["c32"]["requests_per_s"],
            unit="req/s",
            op=">=",
            limit=0.5,
        ),
        judge(
            "median latency at 1 client, Serve vs uvicorn",
            value=serve_["c1"]["p50_ms"],
            baseline=plain["c1"]["p50_ms"],
            unit="ms",
            op="<=",
            limit=2,
            of="difference",
        ),
        judge(
            "Serve 1,000-record requests / in-process, rows/s",
            value=serve_["rows1000"]["requests_per_s"] * 1_000,
            baseline=out["in_process"]["rows_per_s"],
            unit="rows/s",
            op=">=",
            limit=0.5,
        ),
        judge(
            "Serve 1,000-record Arrow IPC requests / in-process, rows/s",
            value=serve_["arrow1000"]["requests_per_s"] * 1_000,
            baseline=out["in_process"]["rows_per_s"],
            unit="rows/s",
            op=">=",
            limit=0.8,
        ),
        judge(
            "durable / buffered log req/s (uvicorn), 32 clients",
            value=plain["c32"]["requests_per_s"],
            baseline=out["plain_buffered"]["c32"]["requests_per_s"],
            unit="req/s",
            op=">=",
            limit=0.9,
        ),
        judge(
            "median latency at 1 client, durable vs buffered log",
            value=plain["c1"]["p50_ms"],
            baseline=out["plain_buffered"]["c1"]["p50_ms"],
            unit="ms",
            op="<=",
            limit=0.5,
            of="difference",
        ),
        judge(
            "/feedback of 1 label, median, 1M / 10k rows logged",
            value=out["feedback"]["1M"]["labels1"]["p50_ms"],
            baseline=out["feedback"]["10k"]["labels1"]["p50_ms"],
            unit="ms",
            op="<=",
            limit=1.5,
        ),
    ]


def reported(out: dict[str, Any]) -> list[tuple[str, float]]:
    """Ratios printed beside the goals, without one of their own."""
    serve_, plain, int8 = out["serve"], out["plain"], out["plain_int8"]
    fb = out["feedback"]
    return [
        (
            "Serve / uvicorn rows/s, 1,000-record requests",
            serve_["rows1000"]["requests_per_s"] / plain["rows1000"]["requests_per_s"],
        ),
        (
            "batched / unbatched Serve req/s, 32 clients",
            out["serve_batched"]["c32"]["requests_per_s"] / serve_["c32"]["requests_per_s"],
        ),
        (
            "int8 / float32 req/s (uvicorn), 32 clients",
            int8["c32"]["requests_per_s"] / plain["c32"]["requests_per_s"],
        ),
        (
            "int8 / float32 rows/s (uvicorn), 1,000-record requests",
            int8["rows1000"]["requests_per_s"] / plain["rows1000"]["requests_per_s"],
        ),
        (
            "durable / buffered log rows/s (uvicorn), 1,000-record requests",
            plain["rows1000"]["requests_per_s"]
            / out["plain_buffered"]["rows1000"]["requests_per_s"],
        ),
        (
            "/feedback of 100 labels spread over 10 days, median, 1M / 10k rows logged",
            fb["1M"]["labels100"]["p50_ms"] / fb["10k"]["labels100"]["p50_ms"],
        ),
        (
            "/feedback of 1 label, median, 1M compacted / 10k rows logged",
            fb["1M_compacted"]["labels1"]["p50_ms"] / fb["10k"]["labels1"]["p50_ms"],
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--reps", type=int, default=2, help="rounds over every arm")
    parser.add_argument("--json", action="store_true", help="print the results file's JSON")
    parser.add_argument("--plain", nargs=2, metavar=("HOME", "PORT"), help=argparse.SUPPRESS)
    parser.add_argument("--int8", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--buffered", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.plain:
        home, port = options.plain[0], int(options.plain[1])
        plain_server(home, port, quantize=options.int8, buffered=options.buffered)
        return
    started = Run("serve")
    out = run(options.seconds, reps=options.reps)
    out["feedback"] = feedback_run(rounds=options.reps, requests=100)
    rows = goal_rows(out)
    out["reported"] = dict(reported(out))
    path = started.write(rows, details=out, echo=options.json)
    arms = ("plain", "plain_buffered", "plain_int8", "serve", "serve_batched", "serve_int8",
            "serve_proxy")  # fmt: skip
    for arm in arms:
        for key, m in out[arm].items():
            if isinstance(m, dict):
                print(
                    f"{arm:14s} {key:9s} {m['requests_per_s']:8.1f} req/s  p50 {m['p50_ms']:7.2f}"
                    f" ms  p99 {m['p99_ms']:7.2f} ms  errors {m['errors']}"
                )
    print(f"in-process     1,000 rows: {out['in_process']['rows_per_s']:.0f} rows/s")
    for arm, kinds in out["feedback"].items():
        for kind, m in kinds.items():
            print(f"feedback {arm:12s} {kind:9s} p50 {m['p50_ms']:7.2f} ms  p99 {m['p99_ms']:7.2f}"
                  f" ms  errors {m['errors']}")  # fmt: skip
    for row in rows:
        print(row.line())
    for what, figure in out["reported"].items():
        print(f"REPORT  {what}: {figure:.3g}")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
