"""The whole loop on one machine, as a newcomer first sees it.

    driftloop demo            # or: make demo; writes driftloop.yaml + data/churn.parquet if missing

One line per stage, a progress bar where the work is long, a summary table at the end:
1. stack: the Prefect server + UI, Ray and the deployments' runner (`driftloop up`);
2. train: the training deployment (validate, Ray Train with 2 workers, gate, promote);
3. serve: the champion on Ray Serve, HTTP on 127.0.0.1;
4. clean traffic, then the monitor deployment: no drift, no retraining;
5. drifted traffic with its feedback labels, then the monitor: the governor asks for a retrain;
6. retraining: the trigger starts it by itself while labelled traffic keeps flowing; past the
   gate, the new version is a canary (30% of requests) until the judgement on live labels
   promotes it (or, rejected, the old one answers), and no request failed;
7. a canary of v1, the old world's model (`driftloop deploy --version 1 --canary`): rolled
   back by itself as soon as it is worse with confidence, no request failed.
Everything heavy runs where a user's runs run (the stack's runner executes the deployments), so
the libraries' logs land in files under `<home>/logs/`, named at the end. The stack keeps running
so the Prefect UI shows the story; `driftloop down` stops it.
"""

import itertools
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

import pyarrow as pa
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from flows.demo_report import Demo, DemoFailed, metric, summarize, summary, verdict
from tasks import registry, synthetic
from tasks.serve import Client, Traffic
from tasks.settings import Settings

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
TRAFFIC_BATCH = 50  # records per POST /predict: the bar moves, the proxy is not the bottleneck


def run(*, config: Path, settings: Settings, console: Console) -> dict[str, Any]:
    """The loop end to end; the summary as a dict (what `driftloop demo --json` prints)."""
    demo = Demo(config=config.resolve(), settings=settings, console=console)
    started = time.monotonic()
    _mark_home(demo)
    start_stack(demo)
    first = train(demo)
    serve_champion(demo, first)
    watch_clean_traffic(demo)
    request = watch_drifted_traffic(demo)
    retrain_by_itself(demo, request)
    canary_of_the_old_world(demo)
    demo.facts["total_s"] = round(time.monotonic() - started, 1)
    summarize(demo)
    return summary(demo)


DEMO_MARKER = "demo.json"  # in the home: a later `driftloop demo` may remove this home


def is_demo_home(home: Path) -> bool:
    return (home / DEMO_MARKER).exists()


def _mark_home(demo: Demo) -> None:
    home = Path(demo.home)
    if home.exists() and any(home.iterdir()) and not is_demo_home(home):
        raise DemoFailed(f"{home} holds state the demo did not make: give it a home of its own")
    home.mkdir(parents=True, exist_ok=True)
    (home / DEMO_MARKER).write_text(json.dumps({"config": str(demo.config)}) + "\n")


def clear_previous(config: Path) -> str:
    """A folder an earlier demo ran in: stop its stack, remove its home, data and config; says
    what it did. Only the demo's own: its config carries the demo's mark, its home the marker."""
    from flows.views import is_demo_config
    from tasks import stack
    from tasks.settings import load_settings

    if not is_demo_config(config.read_text()):
        raise DemoFailed(
            f"{config} is not the demo's (the demo rewrites its data): "
            "run `driftloop demo NEW_FOLDER`"
        )
    settings = load_settings(config, check_source=False)
    home = stack.local_home(settings.home)
    # in a child process: this one never joins the Ray that goes away
    down = [sys.executable, "-m", "flows.cli", "down", "--config", str(config)]
    stopped = subprocess.run(down, capture_output=True, text=True, check=False).stdout.strip()
    if settings.home_is_local and is_demo_home(home):
        shutil.rmtree(home)
    source = Path(settings.dataset.source)
    for old in source.parent.glob(f"{source.stem}*{source.suffix}"):
        old.unlink()
    config.unlink()
    return f"a previous demo's state under {home} removed ({stopped or 'nothing ran'})"


# The stages ---------------------------------------------------------------------------------------


def start_stack(demo: Demo) -> None:
    with demo.stage("stack: Prefect server + UI, Ray, the deployments' runner") as stage:
        up = _driftloop(demo, "up", "--json")
        demo.urls |= {"Prefect UI": up["prefect_api_url"].removesuffix("/api")}
        if up.get("dashboard_url"):
            demo.urls["Ray dashboard"] = up["dashboard_url"]
        _connect(demo)
        stage.outcome = f"Prefect on {demo.urls['Prefect UI']}, deployments registered"


def train(demo: Demo) -> int:
    """The training deployment, run as a user would from Python (`run_deployment`)."""
    from flows.deployments import full_name

    with demo.stage("train: validate, Ray Train (2 workers), gate, promote") as stage:
        run_id = _start(demo, full_name("training"), tag="first-training")
        state = _follow(demo, run_id, label="training")
        champion = registry.champion(root=demo.home, model=demo.model)
        if state != "COMPLETED" or champion is None:
            raise DemoFailed(f"train: the run ended {state} with no champion; {_see(demo)}")
        demo.facts["first"] = champion.version
        stage.outcome = f"v{champion.version} promoted ({metric(demo, champion.version)})"
        return champion.version


def serve_champion(demo: Demo, version: int) -> None:
    with demo.stage("serve: the champion on Ray Serve") as stage:
        up = _driftloop(demo, "up", "--json")
        serving = up.get("serving") or {}
        if serving.get("version") != version:
            raise DemoFailed(f"serve: expected v{version}, Serve says {serving}; {_see(demo)}")
        demo.urls["API"] = serving["url"]
        stage.outcome = f"{serving['url']}/predict answers with v{version}"


def watch_clean_traffic(demo: Demo) -> None:
    rows = _traffic_rows(demo)
    with demo.stage("clean traffic, then the monitor") as stage:
        batch = synthetic.generate(rows=rows, seed=101, task=demo.settings.dataset.task)
        sent = _send(demo, batch, label="clean traffic", feedback=False)
        found = _monitor(demo, tag="clean-traffic")
        demo.facts["clean"] = found
        if found["decision"] != "hold":
            raise DemoFailed(f"monitor: clean traffic asked for a retraining: {found['reason']}")
        stage.outcome = f"{sent:,} predictions; {verdict(found)}"


def watch_drifted_traffic(demo: Demo) -> str:
    """The world changes (a new relationship between the inputs and the label): traffic carries
    it and its labels come back as feedback. The source file stays as it was: the labelled
    traffic alone must teach the retraining the new world."""
    rows = _traffic_rows(demo)
    task = demo.settings.dataset.task
    with demo.stage("drifted traffic with feedback labels, then the monitor") as stage:
        batch = synthetic.generate(rows=rows, seed=202, task=task, scenario="concept_drift")
        sent = _send(demo, batch, label="drifted traffic", feedback=True)
        logged = time.monotonic()  # the drifted traffic is in the prediction log
        found = _monitor(demo, tag="drifted-traffic")
        demo.loop["monitor pass"] = time.monotonic() - logged
        demo.facts["drifted"] = found
        request = (found.get("governor") or {}).get("request_id")
        if found["decision"] != "retrain" or not request:
            raise DemoFailed(f"monitor: the governor held on drifted traffic: {found['reason']}")
        stage.outcome = f"{sent:,} predictions and their labels; {verdict(found)}"
        return str(request)


def retrain_by_itself(demo: Demo, request_id: str) -> None:
    """No call starts it: the monitor's event reaches the retraining deployment's trigger."""
    from flows.deployments import full_name

    with demo.stage("retraining: started by the trigger, traffic flowing") as stage:
        stop = threading.Event()
        during = Traffic()
        clients = threading.Thread(target=_keep_sending, args=(demo, during, stop), daemon=True)
        clients.start()
        try:
            at = time.monotonic()
            run_id = _wait_for_triggered_run(demo, full_name("retraining"), request_id)
            demo.loop["event to triggered run"] = time.monotonic() - at
            at = time.monotonic()
            state = _follow(demo, run_id, label="retraining")
            demo.loop["retraining run"] = time.monotonic() - at
            at = time.monotonic()
            champion = registry.champion(root=demo.home, model=demo.model)
            _wait_until_served(demo, champion.version if champion else None)
            demo.loop["until Serve answers with the champion"] = time.monotonic() - at
            _wait(lambda: champion is None or champion.version in during.versions, timeout_s=30)
        finally:
            stop.set()
            clients.join(timeout=30)
        demo.traffic.answered += during.answered
        demo.traffic.failed += during.failed
        latest = registry.list_versions(root=demo.home, model=demo.model)[-1]
        meta = registry.get_version(root=demo.home, model=demo.model, version=latest)
        promoted = champion is not None and champion.version == latest
        demo.facts |= {
            "retraining_state": state,
            "retrained": latest,
            "promoted": promoted,
            "served": champion.version if champion else None,
            "during_retraining": {
                "answered": during.answered,
                "failed": during.failed,
                "versions": sorted(during.versions),
            },
        }
        if state != "COMPLETED":
            raise DemoFailed(f"retraining: the triggered run ended {state}; {_see(demo)}")
        if during.failed:
            raise DemoFailed(f"retraining: {during.failed} requests failed while it ran")
        demo.facts["new_world"] = on_the_new_world(demo, versions=[demo.facts["first"], latest])
        gate = meta.get("gate", {}).get("summary", "no gate verdict recorded")
        demo.facts["gate"] = gate
        verdict = "promoted, now serving" if promoted else "rejected by the gate, v{} serves"
        stage.outcome = (
            f"v{latest} {verdict.format(champion.version if champion else '?')} (gate: {gate}); "
            f"{during.answered:,} requests during it, 0 failed, versions "
            f"{', '.join(f'v{v}' for v in sorted(during.versions))}"
        )


def canary_of_the_old_world(demo: Demo) -> None:
    """`driftloop deploy --version 1 --canary`: the first version, which the world left behind,
    answers a share of the labelled traffic beside the new champion, and is rolled back by
    itself as soon as it is worse with confidence; no request fails."""
    first = int(demo.facts["first"])
    with demo.stage(f"canary of v{first}, the old world's model") as stage:
        stop, during = threading.Event(), Traffic()
        clients = threading.Thread(target=_keep_sending, args=(demo, during, stop), daemon=True)
        clients.start()
        try:
            ended = _driftloop(demo, "deploy", "--version", str(first), "--canary", "--json")
        finally:
            stop.set()
            clients.join(timeout=30)
        demo.traffic.answered += during.answered
        demo.traffic.failed += during.failed
        demo.facts["canary"] = {**ended, "answered": during.answered, "failed": during.failed,
                                "versions": sorted(during.versions)}  # fmt: skip
        if ended["status"] != "rolled_back":
            raise DemoFailed(f"canary of v{first}: {ended['status']}, not rolled back: "
                             f"{ended['reason']}")  # fmt: skip
        if during.failed:
            raise DemoFailed(f"canary of v{first}: {during.failed} requests failed")
        stage.outcome = (f"rolled back by itself: {ended['reason']}; {during.answered:,} requests "
                         f"during it, 0 failed, versions "
                         f"{', '.join(f'v{v}' for v in sorted(during.versions))}")  # fmt: skip


NEW_WORLD_ROWS = 5_000


def on_the_new_world(demo: Demo, *, versions: list[int]) -> dict[str, Any]:
    """Each version's primary metric on fresh rows of the new world that none of them saw."""
    from tasks.evaluate import metric, predict_encoded, primary_metric
    from tasks.model import load_model

    settings = demo.settings
    fresh = synthetic.generate(rows=NEW_WORLD_ROWS, seed=505, task=settings.dataset.task,
                               scenario="concept_drift")  # fmt: skip
    name = primary_metric(settings.dataset.task, settings.gate)
    found: dict[str, Any] = {"rows": fresh.num_rows, "metric": name}
    for version in versions:
        location = registry.resolve(root=demo.home, model=demo.model, ref=version)
        y, pred = predict_encoded(load_model(location), fresh, target=settings.dataset.target,
                                  task=settings.dataset.task)  # fmt: skip
        found[f"v{version}"] = round(metric(name, y, pred), 4)
    return found


# The summary --------------------------------------------------------------------------------------


# Helpers: the command, the deployments, the traffic -----------------------------------------------


def _driftloop(demo: Demo, *args: str) -> dict[str, Any]:
    """A `driftloop` subcommand in a child process; its chatter goes to `<home>/logs/demo.log`."""
    demo.logs.mkdir(parents=True, exist_ok=True)
    log = demo.logs / "demo.log"
    command = [sys.executable, "-m", "flows.cli", *args, "--config", str(demo.config)]
    with log.open("a") as err:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=err, text=True, check=False)
    if done.returncode != 0:
        last = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise DemoFailed(f"driftloop {args[0]}: {last[0]} (log: {log})")
    return dict(json.loads(done.stdout))


def _connect(demo: Demo) -> None:
    """Point this process's Prefect at the stack (before Prefect is first imported)."""
    from tasks import stack

    stack.use(home=stack.local_home(demo.settings.home))


def _start(demo: Demo, deployment: str, *, tag: str) -> UUID:
    """A deployment's run, tagged for the UI (the flow names it: `train: churn`)."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    found = run_deployment(
        deployment,
        parameters={"config": str(demo.config)},
        tags=["demo", tag],
        timeout=0,
        as_subflow=False,
    )
    assert isinstance(found, FlowRun)  # called from sync code: not a coroutine
    return found.id


def _follow(demo: Demo, run_id: UUID, *, label: str) -> str:
    """Wait for a flow run to end, with a bar over the epochs its train task logs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    epochs = demo.settings.training.epochs
    seen: set[str] = set()
    with _bar(demo) as bar, get_client(sync_client=True) as client:
        task = bar.add_task(f"{label}: waiting for the runner", total=epochs)
        while True:
            run = client.read_flow_run(run_id)
            state = run.state.type.value if run.state else "PENDING"
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])), limit=200
            )
            for log in logs:
                if log.message.startswith("epoch ") and log.message not in seen:
                    seen.add(log.message)
            stage = "training epochs" if seen else (run.state.name if run.state else "pending")
            bar.update(task, completed=min(len(seen), epochs), description=f"{label}: {stage}")
            if state in TERMINAL:
                bar.update(task, completed=epochs)
                return state
            time.sleep(1.0)


def _wait_for_triggered_run(demo: Demo, deployment: str, request_id: str) -> UUID:
    """The retraining run an automation created for this request (none is started here)."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + 120
    with _bar(demo) as bar, get_client(sync_client=True) as client:
        bar.add_task("waiting for the trigger to start the retraining", total=None)
        found = client.read_deployment_by_name(deployment)
        while time.monotonic() < deadline:
            for run in client.read_flow_runs(limit=50):
                if (
                    run.deployment_id == found.id
                    and run.parameters.get("request_id") == request_id
                    and run.created_by is not None
                    and run.created_by.type == "AUTOMATION"
                ):
                    return run.id
            time.sleep(1.0)
    raise DemoFailed(
        f"retraining: no run was triggered within 120 s of request {request_id}; {_see(demo)}"
    )


def _monitor(demo: Demo, *, tag: str) -> dict[str, Any]:
    """The scheduled monitor deployment, run now; its verdict from the pass's monitor.json."""
    from flows.deployments import full_name
    from tasks.monitor import latest

    _wait_until_logged(demo)
    run_id = _start(demo, full_name("monitor"), tag=tag)
    state = _follow(demo, run_id, label="monitor")
    found = latest(home=demo.home, model=demo.model)
    if state != "COMPLETED" or found is None:
        raise DemoFailed(f"monitor: the run ended {state}; {_see(demo)}")
    return found


def _traffic_rows(demo: Demo) -> int:
    window = demo.settings.monitoring.window_rows
    return max(window or 0, demo.settings.monitoring.min_rows)


def _features(demo: Demo, batch: pa.Table) -> list[dict[str, Any]]:
    d = demo.settings.dataset
    drop = [c for c in (d.target, d.id, d.timestamp) if c and c in batch.column_names]
    return list(batch.drop_columns(drop).to_pylist())


def _send(demo: Demo, batch: pa.Table, *, label: str, feedback: bool) -> int:
    """POST the batch to /predict in small requests; with `feedback`, its labels to /feedback."""
    records = _features(demo, batch)
    answered: list[str] = []
    with _bar(demo) as bar, Client(demo.settings.serving, seen=demo.traffic) as api:
        task = bar.add_task(label, total=len(records))
        for start in range(0, len(records), TRAFFIC_BATCH):
            answered += api.predict(records[start : start + TRAFFIC_BATCH])
            bar.advance(task, TRAFFIC_BATCH)
        if feedback:
            unknown = api.feedback(answered, batch[demo.settings.dataset.target].to_pylist())
            if unknown:
                raise DemoFailed(
                    f"{label}: {len(unknown):,} of {len(answered):,} labels were not stored "
                    f"(unknown request ids, e.g. {unknown[0]}); {_see(demo)}"
                )
    if demo.traffic.failed:
        raise DemoFailed(f"{label}: {demo.traffic.failed} requests failed")
    demo.predicted += len(answered)
    return len(answered)


def _keep_sending(demo: Demo, seen: Traffic, stop: threading.Event) -> None:
    """A client that keeps asking (10 records a time) while the model is retrained, rolled out
    and swapped, and sends each answer's label back: a canary is judged on them."""
    task, target = demo.settings.dataset.task, demo.settings.dataset.target
    batch = synthetic.generate(rows=5_000, seed=303, task=task, scenario="concept_drift")
    records, labels = _features(demo, batch), batch[target].to_pylist()
    with Client(demo.settings.serving, seen=seen) as api:
        for i in itertools.count():
            if stop.wait(0.1):
                return
            at = i % 500 * 10
            answered = api.predict(records[at : at + 10])
            if answered:
                api.feedback(answered, labels[at : at + 10])


def _wait_until_served(demo: Demo, version: int | None) -> None:
    with Client(demo.settings.serving) as api:
        if not api.wait_for_version(version):
            raise DemoFailed(f"serve: v{version} is champion but Serve does not answer with it")


def _wait_until_logged(demo: Demo, timeout_s: float = 30) -> None:
    """Until the prediction log holds every answered row (each is in a replica's spool segment
    before its answer leaves: a check that it holds, so the monitor judges all of it)."""
    from tasks import traffic

    def logged() -> int:
        found = traffic.answered(home=demo.home, model=demo.model, columns=["request_id"])
        return 0 if found is None else found.num_rows

    if not _wait(lambda: logged() >= demo.predicted, timeout_s=timeout_s):
        raise DemoFailed(f"serve: {logged():,} of {demo.predicted:,} predictions logged after "
                         f"{timeout_s:.0f} s; {_see(demo)}")  # fmt: skip


def _wait(done: Callable[[], bool], *, timeout_s: float, every_s: float = 0.25) -> bool:
    """Whether `done()` holds within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(every_s)
    return True


@contextmanager
def _bar(demo: Demo) -> Iterator[Progress]:
    columns = (TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    shown = demo.console.is_terminal  # a log file or a pipe gets the stage lines alone
    with Progress(*columns, console=demo.console, transient=True, disable=not shown) as bar:
        yield bar


def _see(demo: Demo) -> str:
    return f"see {demo.logs / 'deployments.log'} and the Prefect UI"
