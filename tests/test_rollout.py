"""Safe rollout on a real Serve app, real HTTP and a real Prefect server: a canary of a worse
model is rolled back by itself, a better one promoted; a shadow never answers; the canary's
share holds and a request key always lands on one model; a restart resumes a rollout and a
second one is refused."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pytest
from helpers import TARGET, InBackground, free_port, register_champion, train_quick

from tasks import model as m
from tasks import registry, synthetic, traffic
from tasks.serve import ServeArgs, control, rollout
from tasks.serve.routing import KEY_HEADER, in_canary
from tasks.settings import Settings, load_settings

pytestmark = pytest.mark.integration
MODEL = "churn"


@dataclass
class Project:
    config: Path
    settings: Settings
    champion: int
    better: int
    worse: int

    @property
    def args(self) -> ServeArgs:
        return ServeArgs.of(self.settings)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.serving.port}"


def _shuffled(table: pa.Table, seed: int) -> pa.Table:
    y = np.random.default_rng(seed).permutation(table[TARGET].to_numpy())
    return table.set_column(table.column_names.index(TARGET), TARGET, pa.array(y))


def _register(home: Path, predictor: m.Predictor, holdout: pa.Table, tmp: Path) -> int:
    """A version that is not champion (the helper makes each one champion: put the alias back)."""
    before = registry.champion(root=str(home), model=MODEL)
    version = register_champion(home, predictor, holdout=holdout, reference=holdout, tmp=tmp)
    if before is not None:
        registry.set_alias(root=str(home), model=MODEL, alias="champion", version=before.version,
                           reason="test: the champion stays")  # fmt: skip
    return version


@pytest.fixture(scope="module")
def project(
    ray_local: None, prefect_server: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Project]:
    root = tmp_path_factory.mktemp("rollout")
    table = synthetic.generate(rows=6_000, seed=11)
    holdout = table.slice(5_000)
    home = root / "home"
    # ROC-AUC on fresh rows: the champion ~0.72, the better one ~0.84, the shuffled one ~0.5:
    # each verdict comes from the first milestones, far from the budget
    champion = register_champion(home, train_quick(table.slice(0, 500), steps=20, seed=1),
                                 holdout=holdout, reference=holdout, tmp=root / "a")  # fmt: skip
    better = _register(home, train_quick(table.slice(0, 5_000), steps=600, seed=2), holdout,
                       root / "b")  # fmt: skip
    worse = _register(home, train_quick(_shuffled(table.slice(0, 5_000), 3), steps=300, seed=3),
                      holdout, root / "c")  # fmt: skip
    config = root / "driftloop.yaml"
    config.write_text(
        f"home: {home}\n"
        "dataset:\n  name: churn\n  source: data/churn.parquet\n  target: churned\n"
        "  id: customer_id\n  timestamp: event_time\n"
        f"serving:\n  port: {free_port()}\n  replicas: 2\n  num_cpus: 0.25\n"
        "  log_flush_seconds: 0.5\n"
        "rollout:\n  share: 0.3\n  min_rows: 100\n  max_rows: 4000\n  check_seconds: 1\n"
        "  resamples: 200\n  min_requests: 30\n"
    )
    settings = load_settings(config, check_source=False)
    status = control.start(ServeArgs.of(settings))
    assert status.running, status
    yield Project(config, settings, champion, better, worse)
    control.stop(everything=True)


class Traffic(InBackground):
    """Clients that send new-world rows and their labels while a rollout runs; every answer's
    version and every failure is counted."""

    def __init__(self, project: Project, *, seed: int) -> None:
        super().__init__()
        self.project, self.seed = project, seed
        self.versions: Counter[int] = Counter()
        self.failed: list[str] = []

    def run(self) -> None:
        rows = synthetic.generate(rows=20_000, seed=self.seed)
        labels = rows[TARGET].to_pylist()
        records = rows.drop_columns([TARGET, "customer_id", "event_time"]).to_pylist()
        with httpx.Client(base_url=self.project.url, timeout=30) as http:
            for i in range(0, len(records), 10):
                if self.stop.is_set():
                    return
                answer = http.post("/predict", json={"records": records[i : i + 10]})
                if answer.status_code != 200:
                    self.failed.append(f"{answer.status_code}: {answer.text[:200]}")
                    continue
                body = answer.json()
                self.versions[int(body["version"])] += len(body["predictions"])
                ids = [p["request_id"] for p in body["predictions"]]
                sent = labels[i : i + 10]
                given = [{"request_id": r, "label": y} for r, y in zip(ids, sent, strict=True)]
                http.post("/feedback", json={"labels": given})


def served_everywhere(project: Project) -> set[tuple[Any, Any]]:
    """(version, candidate) of every replica, asked over /healthz on new connections."""
    seen = set()
    for _ in range(16):
        body = httpx.get(f"{project.url}/healthz", headers={"Connection": "close"}).json()
        seen.add((body["version"], (body.get("rollout") or {}).get("candidate")))
    return seen


def rollout_events(name: str, *, at_least: int = 1) -> list[Any]:
    """The module's events of this name (polled: the server stores events asynchronously)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter

    wanted = EventFilter(event=EventNameFilter(name=[name]))
    found: list[Any] = []
    with get_client(sync_client=True) as client:
        for _ in range(60):
            found = list(client.read_events(filter=wanted, limit=50).events)
            if len(found) >= at_least:
                break
            time.sleep(0.5)
    return found


def test_a_canary_of_a_worse_model_is_rolled_back_by_itself_and_no_request_fails(
    project: Project,
) -> None:
    from flows.serving import rollout as rollout_flow

    with Traffic(project, seed=21) as clients:
        ended = rollout_flow(config=str(project.config), candidate=project.worse, mode="canary")
    assert ended["status"] == "rolled_back", ended["reason"]
    assert "worse than the champion with confidence" in ended["reason"]
    assert clients.failed == []  # the champion never stopped answering
    assert clients.versions[project.worse] > 0  # the candidate did answer its share meanwhile
    assert registry.champion(root=project.settings.home, model=MODEL).version == project.champion  # type: ignore[union-attr]
    assert served_everywhere(project) == {(project.champion, None)}
    record = registry.read_rollout(root=project.settings.home, model=MODEL)
    assert record is not None
    assert record["evidence"]["look_rows"] <= project.settings.rollout.max_rows  # in budget
    events = rollout_events("driftloop.rollout.rolled_back")
    assert [e.payload["candidate"] for e in events] == [project.worse]
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["rollout-churn"]))
        )
    assert found
    assert "| failures |" in str(found[0].data)


def test_a_canary_of_a_better_model_is_promoted_and_served_by_every_replica(
    project: Project,
) -> None:
    from flows.serving import rollout as rollout_flow

    before = registry.champion(root=project.settings.home, model=MODEL)
    assert before is not None
    with Traffic(project, seed=22) as clients:
        ended = rollout_flow(config=str(project.config), candidate=project.better, mode="canary")
    assert ended["status"] == "promoted", ended["reason"]
    assert clients.failed == []
    champion = registry.champion(root=project.settings.home, model=MODEL)
    assert champion is not None
    assert champion.version == project.better
    assert served_everywhere(project) == {(project.better, None)}
    assert [e.payload["candidate"] for e in rollout_events("driftloop.rollout.promoted")] == [
        project.better
    ]
    # the champion before it is the one to go back to
    args = project.args
    registry.set_alias(root=args.home, model=MODEL, alias="champion", version=before.version,
                       reason="test: back to the first champion")  # fmt: skip
    rollout.serve_plan(args)


def test_a_shadow_never_answers_and_logs_its_outputs_under_the_answered_ids(
    project: Project,
) -> None:
    started = rollout.begin(project.args, candidate=project.better, mode="shadow", share=0.3)
    try:
        assert served_everywhere(project) == {(project.champion, project.better)}
        rows = synthetic.generate(rows=400, seed=31)
        records = rows.drop_columns([TARGET, "customer_id", "event_time"]).to_pylist()
        answered: list[str] = []
        with httpx.Client(base_url=project.url, timeout=30) as http:
            for i in range(0, len(records), 20):
                body = http.post("/predict", json={"records": records[i : i + 20]}).json()
                assert body["version"] == project.champion  # the client sees the champion only
                answered += [p["request_id"] for p in body["predictions"]]
    finally:
        ended = rollout.conclude(project.args, started, promote=False, reason="test: done")
    assert ended.status == "rolled_back"
    shadow = traffic.read(home=project.settings.home, model=MODEL, kind="shadow",
                          columns=[traffic.REQUEST_ID, traffic.MODEL_VERSION])  # fmt: skip
    assert shadow is not None
    assert set(shadow[traffic.MODEL_VERSION].to_pylist()) == {project.better}
    assert sorted(shadow[traffic.REQUEST_ID].to_pylist()) == sorted(answered)  # each once
    logged = traffic.answered(home=project.settings.home, model=MODEL,
                              columns=[traffic.REQUEST_ID, traffic.MODEL_VERSION])  # fmt: skip
    assert logged is not None
    mine = logged.filter(pa.compute.is_in(logged[traffic.REQUEST_ID], pa.array(answered)))
    assert set(mine[traffic.MODEL_VERSION].to_pylist()) == {project.champion}  # not twice


def test_a_canary_answers_its_share_and_a_request_key_always_lands_on_one_model(
    project: Project,
) -> None:
    share = project.settings.rollout.share
    started = rollout.begin(project.args, candidate=project.better, mode="canary", share=share)
    try:
        record = {k: v for k, v in synthetic.generate(rows=1, seed=41).to_pylist()[0].items()
                  if k not in (TARGET, "customer_id", "event_time")}  # fmt: skip
        n, by_key = 10_000, dict[str, set[int]]()
        with httpx.Client(base_url=project.url, timeout=30) as http:

            def answered_by(_: int) -> int:
                return int(http.post("/predict", json={"records": [record]}).json()["version"])

            with ThreadPoolExecutor(max_workers=8) as clients:  # 8 clients at once
                versions = Counter(clients.map(answered_by, range(n)))
            for i in range(60):
                key = f"customer-{i}"
                keyed = [http.post("/predict", json={"records": [record]},
                                   headers={KEY_HEADER: key}) for _ in range(4)]  # fmt: skip
                by_key[key] = {answer.json()["version"] for answer in keyed}
    finally:
        rollout.conclude(project.args, started, promote=False, reason="test: done")
    bound = 4 * math.sqrt(n * share * (1 - share))  # a binomial's 4 sigma
    assert abs(versions[project.better] - n * share) <= bound, versions
    assert versions[project.better] + versions[project.champion] == n
    for key, seen in by_key.items():
        expected = project.better if in_canary(key, share=share) else project.champion
        assert seen == {expected}, key


def test_a_restart_mid_canary_resumes_it_and_a_second_rollout_is_refused(
    project: Project,
) -> None:
    from flows.serving import rollout as rollout_flow

    started = rollout.begin(project.args, candidate=project.worse, mode="canary", share=0.3)
    with pytest.raises(rollout.RolloutError) as refused:
        rollout.begin(project.args, candidate=project.better, mode="shadow", share=0.3)
    assert str(refused.value) == (
        f"churn: a canary of v{project.worse} (30% of requests) beside v{project.champion}, "
        f"running since {started.started_at[:19]}Z; one rollout at a time"
    )
    control.stop(home=project.settings.home)  # the stack goes down mid-canary...
    assert control.start(project.args).running  # ...and up again: it serves the same plan
    assert served_everywhere(project) == {(project.champion, project.worse)}
    with Traffic(project, seed=51) as clients:  # the flow resumes the running rollout
        ended = rollout_flow(config=str(project.config), candidate=project.worse, mode="canary")
    assert ended["started_at"] == started.started_at  # the same rollout, not a new one
    assert ended["status"] == "rolled_back"
    assert clients.failed == []
