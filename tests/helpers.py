"""What several test modules share: a small model trained in-process, a project with a champion,
traffic written as Serve writes it, free ports, and waiting on a Prefect server's API.

Test modules import from here (`from helpers import ...`), never from one another.
"""

import contextlib
import json
import os
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typing_extensions import Self

from tasks import data, files, registry, synthetic, traffic
from tasks import model as m
from tasks.calibration import calibrate
from tasks.evaluate import compute_metrics
from tasks.monitor import logged_rows
from tasks.settings import Features, TrainingConfig

TARGET = "churned"
NOW = datetime(2026, 6, 1, 12, tzinfo=timezone.utc)
FEATURES = Features(
    numeric=list(synthetic.NUMERIC_FEATURES), categorical=list(synthetic.CATEGORICAL_FEATURES)
)


# A champion, a project, traffic -------------------------------------------------------------------


def train_quick(table: pa.Table, *, steps: int = 400, seed: int = 0) -> m.Predictor:
    """A small calibrated MLP trained in this process (no Ray: the monitor needs a real model,
    not Ray Train; tests/test_training_flow.py covers training)."""
    cut = int(table.num_rows * 0.8)
    train, validation = table.slice(0, cut), table.slice(cut)
    pre = m.Preprocessor.fit(train, features=FEATURES, target=TARGET, task="classification")
    spec = m.ModelSpec.build(pre, TrainingConfig(hidden_layers=[32, 16], dropout=0.0))
    torch.manual_seed(seed)
    net = m.TabularMLP(spec)
    encoded = pre.transform(train)
    numeric, categorical = torch.from_numpy(encoded.numeric), torch.from_numpy(encoded.categorical)
    y = torch.from_numpy(pre.encode_target(train))
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    picks = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, cut, (512,), generator=picks)
        loss = m.compute_loss(net(numeric[idx], categorical[idx]), y[idx], kind="binary").mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    raw = m.Predictor(model=net, spec=spec, preprocessor=pre)
    calibration = calibrate(
        raw.logits(validation), pre.encode_target(validation), kind="binary", bins=15
    )
    return raw.with_calibration(calibration)


def labels_of(table: pa.Table) -> np.ndarray:
    return np.asarray(table[TARGET].to_numpy(), dtype=np.int64)


def register_champion(
    home: Path,
    predictor: m.Predictor,
    *,
    holdout: pa.Table,
    reference: pa.Table,
    tmp: Path,
    trained_on: list[str] | None = None,
) -> int:
    """The predictor as champion, with its holdout metrics and training sample, as the
    training pipeline registers one (`trained_on`: request ids of the labelled production rows
    it learned from, as a retraining records them)."""
    saved = m.save_model(
        tmp / "model",
        model=predictor.model,
        spec=predictor.spec,
        preprocessor=predictor.preprocessor,
        calibration=predictor.calibration,
    )
    metrics = compute_metrics(labels_of(holdout), predictor.predict(holdout), task="classification")
    version = registry.register(
        root=str(home),
        model="churn",
        model_dir=str(saved),
        metadata={"metrics": metrics},
        extra_files={
            files.REFERENCE: data.sample_parquet(reference, rows=data.REFERENCE_ROWS),
            files.TRAINED_ON: _parquet(
                pa.table({traffic.REQUEST_ID: pa.array(trained_on or [], pa.string())})
            ),
        },
    )
    registry.set_alias(
        root=str(home), model="churn", alias="champion", version=version, reason="test"
    )
    return version


def _parquet(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue())


def write_project(root: Path, **monitoring: Any) -> Path:
    """A driftloop.yaml (home under `root`) whose monitoring section is `monitoring`."""
    source = root / "data" / "churn.parquet"
    if not source.exists():
        synthetic.write_parquet(synthetic.generate(rows=2000, seed=1), source)
    lines = [
        f"home: {root / 'home'}",
        "dataset:",
        "  name: churn",
        "  source: data/churn.parquet",
        f"  target: {TARGET}",
        "  id: customer_id",
        "  timestamp: event_time",
    ]
    if monitoring:
        lines.append("monitoring:")
        lines += [f"  {key}: {json.dumps(value)}" for key, value in monitoring.items()]
    config = root / "driftloop.yaml"
    config.write_text("\n".join(lines) + "\n")
    return config


def serve(
    home: Path,
    predictor: m.Predictor,
    table: pa.Table,
    *,
    version: int,
    at: datetime = NOW,
    labelled: float = 0.0,
    prefix: str = "r",
    features: pa.Table | None = None,
) -> pa.Table:
    """Write `table`'s rows as the prediction log Serve writes (the model's real predictions),
    and labels for the first `labelled` share of them. `features`: log these columns instead
    (a broken feed), with the predictions made on `table`."""
    scored = table.select(FEATURES.all)
    logged = (
        scored
        if features is None
        else features.drop_columns(
            [c for c in (TARGET, "customer_id", "event_time") if c in features.column_names]
        )
    )
    ids = [f"{prefix}{i:09d}" for i in range(table.num_rows)]
    rows = logged_rows(
        features=logged,
        outputs=predictor.predict(scored),
        classes=predictor.classes,
        version=version,
        at=at,
        request_ids=ids,
    )
    traffic.append(home=str(home), model="churn", kind="predictions", rows=rows)
    count = round(labelled * table.num_rows)
    if count:
        labels = pa.table(
            {
                traffic.REQUEST_ID: pa.array(ids[:count]),
                TARGET: table[TARGET].slice(0, count),
                traffic.RECEIVED_AT: pa.array([at] * count, pa.timestamp("us", tz="UTC")),
            }
        )
        traffic.append(home=str(home), model="churn", kind="feedback", rows=labels)
    return rows


# Services on 127.0.0.1 ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def api(url: str, path: str, body: dict[str, Any] | None = None) -> Any:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{url}{path}", data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with opener.open(request, timeout=10) as resp:
            return json.loads(resp.read().decode() or "null")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def wait_for(what: str, check: Any, *, timeout_s: float, every_s: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


TERMINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def runs_of(url: str, deployment_id: str, **flow_runs: Any) -> list[dict[str, Any]]:
    body = {"flow_runs": {"deployment_id": {"any_": [deployment_id]}, **flow_runs}}
    return list(api(url, "/flow_runs/filter", body) or [])


def read_events(name: str, *, ids: list[str]) -> list[Any]:
    """The events of this name among `ids` on the module's Prefect server (polled: events are
    persisted asynchronously)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventIDFilter, EventNameFilter

    wanted = EventFilter(
        event=EventNameFilter(name=[name]), id=EventIDFilter(id=[uuid.UUID(i) for i in ids])
    )
    found: list[Any] = []
    with get_client(sync_client=True) as client:
        for _ in range(40):
            found = client.read_events(filter=wanted, limit=50).events
            if len(found) == len(ids):
                return found
            time.sleep(0.5)
    return found


# A browser -------------------------------------------------------------------------------------

# Chromium as the machine's probe starts it: no sandbox as root, no calls home (no internet here)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]  # fmt: skip


def find_chromium() -> str:
    """Debian's chromium; a skip without it (a failure with CI set: CI installs it)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("no chromium on PATH: `make install` installs Debian's chromium package")
        pytest.skip("no chromium on PATH (`make browser` installs Debian's package)")
    return found


# Something in the background while a block runs -------------------------------------------------


class InBackground:
    """`run()` in a thread of its own while a `with` block runs; the block's end sets `stop` and
    waits for it (clients that keep sending, a sampler that keeps looking)."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self.run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self._thread.join(timeout=60)

    def run(self) -> None:
        raise NotImplementedError


# What listens ----------------------------------------------------------------------------------


def on_loopback(ip: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped loopback address (::ffff:127.0.0.1)."""
    import ipaddress

    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


# Two listeners upstream code opens on every interface (README, "Security"): Ray Serve 2.60's
# replica gRPC server (`[::]:0`, guarded by Ray's token) and torch's TCPStore, which Ray Train's
# rank 0 opens for the process group (for one training run)
UPSTREAM_WILDCARDS = ("ServeReplica", "RayTrainWorker")


def stack_listeners(home: Path) -> set[tuple[str, str, int]]:
    """(process, address, port) of every TCP socket the stack's processes (and all their
    descendants: Ray's workers, Serve's replicas) listen on now."""
    import psutil

    state = json.loads((home / "run" / "stack.json").read_text())
    roots = [s["pid"] for s in state["services"].values() if s.get("pid")]
    family: dict[int, str] = {}
    for pid in roots:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    family[proc.pid] = " ".join(proc.cmdline())[:200]
    found = set()
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in family:
            found.add((family[conn.pid], conn.laddr.ip, conn.laddr.port))
    return found
