"""The model registry on a shared bucket: a real S3 API (moto's server on 127.0.0.1), real
processes, and the team's Prefect server (a real temporary one) serialising the writers.

Run it under the shared lock: it starts a Prefect server.
"""

import contextlib
import itertools
import json
import logging
import multiprocessing
import os
import random
import socket
import time
import uuid
from collections.abc import Iterator
from multiprocessing.context import ForkServerContext
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest

from tasks import registry
from tasks.registry import lock as registry_lock
from tasks.registry import store as registry_store

# moto's S3 server and a Prefect server on 127.0.0.1: real services
pytestmark = pytest.mark.integration

MODEL = "churn"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "driftloop-test",
    "AWS_SECRET_ACCESS_KEY": "driftloop-test",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata probe for credentials
}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 with one bucket, and dummy credentials in the environment."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"{host}:{port}"
    with pytest.MonkeyPatch.context() as patch:
        for name, value in AWS_ENV.items():
            patch.setenv(name, value)
        pafs.S3FileSystem(
            endpoint_override=endpoint, scheme="http", region="us-east-1",
            allow_bucket_creation=True,
        ).create_dir("team")  # fmt: skip
        yield endpoint
    server.stop()


@pytest.fixture
def home(s3_endpoint: str) -> str:
    """A fresh DRIFTLOOP_HOME on the bucket, as a user would write it in the config."""
    prefix = uuid.uuid4().hex[:8]
    return f"s3://team/{prefix}?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"


@pytest.fixture(scope="module")
def prefect_api(prefect_server: None) -> str:
    """The URL of the module's Prefect server: what every writer sets PREFECT_API_URL to."""
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value())


@pytest.fixture(scope="module")
def processes() -> ForkServerContext:
    """Processes forked from a clean server that has the registry imported (not Prefect)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["tasks.registry"])
    return ctx


@pytest.fixture(autouse=True)
def _no_stray_children() -> Iterator[None]:
    yield
    for child in multiprocessing.active_children():
        child.kill()


def make_model_dir(path: Path, *, tag: str, size: int = 4096) -> Path:
    """A model directory whose every file starts with `tag`, so a mixed version shows."""
    path.mkdir(parents=True, exist_ok=True)
    for name in registry.MODEL_FILES:
        body = f"{name}:{tag}:".encode()
        (path / name).write_bytes(body + b"x" * max(size - len(body), 0))
    return path


def folder_of(uri: str) -> str:
    """The folder a URI names on its bucket (the URI keeps the endpoint options of the home)."""
    return pafs.FileSystem.from_uri(uri)[1]


def files_of(home: str) -> dict[str, bytes]:
    """Every object under the registry, by path: to show that a refused write wrote nothing."""
    fs, path = pafs.FileSystem.from_uri(home)
    selector = pafs.FileSelector(f"{path}/registry", recursive=True, allow_not_found=True)
    found = [i for i in fs.get_file_info(selector) if i.type == pafs.FileType.File]
    return {i.path: fs.open_input_stream(i.path).read() for i in found}


def assert_whole(home: str, model: str) -> list[int]:
    """Every listed version passes its checksums and holds one writer's files, as its metadata
    says; the pointer is where the history's last move of each alias left it. Returns the
    versions."""
    versions = registry.list_versions(root=home, model=model)
    for version in versions:
        registry.check_version(root=home, model=model, version=version)
        meta = registry.get_version(root=home, model=model, version=version)
        fs, folder = pafs.FileSystem.from_uri(meta["path"])
        for name in registry.MODEL_FILES:
            head = fs.open_input_stream(f"{folder}/{name}").read(200)
            assert head.startswith(f"{name}:{meta['tag']}:".encode()), (version, name)
    table = registry.aliases(root=home, model=model)
    changes = registry.history(root=home, model=model)
    assert [c.seq for c in changes] == list(range(1, len(changes) + 1))
    assert table == {c.alias: c.to_version for c in changes}  # the last move of each wins
    assert set(table.values()) <= set(versions)
    return versions


# The registry's operations on a bucket -----------------------------------------------------------


def assert_each_holds_its_own(home: str, runs: list[dict[str, Any]]) -> None:
    """Each writer got back a version holding its own model (its tag in the metadata)."""
    for run in runs:
        meta = registry.get_version(root=home, model=MODEL, version=run["version"])
        assert meta["tag"] == run["tag"]


def test_register_resolve_aliases_rollback_and_check_version_work_on_a_bucket(
    home: str, prefect_api: str, tmp_path: Path
) -> None:
    versions = [
        registry.register(
            root=home, model=MODEL, model_dir=str(make_model_dir(tmp_path / tag, tag=tag)),
            metadata={"tag": tag}, extra_files={"model_card.md": f"# {tag}\n".encode()},
        )
        for tag in "abc"
    ]  # fmt: skip
    assert versions == [1, 2, 3]
    assert assert_whole(home, MODEL) == [1, 2, 3]
    meta = registry.get_version(root=home, model=MODEL, version=2)
    assert (meta["tag"], meta["path"]) == ("b", registry.resolve(root=home, model=MODEL, ref=2))
    assert meta["path"].startswith("s3://team/")
    fs, folder = pafs.FileSystem.from_uri(meta["path"])
    assert fs.open_input_stream(f"{folder}/model_card.md").read() == b"# b\n"

    registry.set_alias(root=home, model=MODEL, alias="champion", version=1, reason="", expect=None)
    registry.set_alias(root=home, model=MODEL, alias="champion", version=2, reason="", expect=1)
    with pytest.raises(registry.AliasMoved, match=r"points at v2 now, not v1"):
        registry.set_alias(root=home, model=MODEL, alias="champion", version=3, reason="", expect=1)
    registry.set_alias(root=home, model=MODEL, alias="champion", version=3, reason="gate passed")
    registry.set_alias(root=home, model=MODEL, alias="shadow", version=1, reason="try it")
    back = registry.rollback(root=home, model=MODEL, reason="bad latency")
    assert (back.from_version, back.to_version, back.action) == (3, 2, "rollback")
    assert registry.aliases(root=home, model=MODEL) == {"champion": 2, "shadow": 1}
    assert folder_of(registry.resolve(root=home, model=MODEL, ref="champion")).endswith("churn/2")
    moves = [(c.alias, c.from_version, c.to_version) for c in
             registry.history(root=home, model=MODEL)]  # fmt: skip
    assert moves == [("champion", None, 1), ("champion", 1, 2), ("champion", 2, 3),
                     ("shadow", None, 1), ("champion", 3, 2)]  # fmt: skip
    assert_whole(home, MODEL)

    # the writers took turns through the team's Prefect server: the limit is there, limit 1
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(f"registry-{MODEL}")
    assert (limit.limit, limit.active_slots) == (1, 0)

    # a file changed on the bucket after registration: reported, and the version is not listed
    with fs.open_output_stream(f"{folder}/weights.safetensors") as out:
        out.write(b"tampered")
    with pytest.raises(registry.RegistryError, match=r"version 2 is damaged: weights\.safetensors"):
        registry.check_version(root=home, model=MODEL, version=2)
    assert registry.list_versions(root=home, model=MODEL) == [1, 3]
    with pytest.raises(registry.RegistryError, match="no version 2"):
        registry.set_alias(root=home, model=MODEL, alias="champion", version=2, reason="")


def test_writes_to_a_bucket_without_a_reachable_prefect_api_refuse_and_reads_still_work(
    home: str, prefect_api: str, tmp_path: Path
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    model_dir = str(make_model_dir(tmp_path / "m", tag="a"))
    version = registry.register(root=home, model=MODEL, model_dir=model_dir, metadata={"tag": "a"})
    registry.set_alias(root=home, model=MODEL, alias="champion", version=version, reason="first")
    before = files_of(home)
    writes = {
        "register": lambda: registry.register(
            root=home, model=MODEL, model_dir=model_dir, metadata={"tag": "b"}
        ),
        "set_alias": lambda: registry.set_alias(
            root=home, model=MODEL, alias="champion", version=version, reason=""
        ),
        "rollback": lambda: registry.rollback(root=home, model=MODEL),
    }
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}/api"
    setups: list[tuple[dict[str, Any], str, list[str]]] = [
        ({"restore_defaults": {PREFECT_API_URL}}, "set PREFECT_API_URL", list(writes)),
        # a server that is down: register, the one write that uploads before it locks
        (
            {"updates": {PREFECT_API_URL: dead}},
            f"cannot reach the Prefect API at {dead}",
            ["register"],
        ),
    ]
    for setting, says, names in setups:
        with temporary_settings(**setting):
            for name in names:
                with pytest.raises(registry.RegistryError) as refused:
                    writes[name]()
                message = str(refused.value)
                assert message.startswith(f"{MODEL}: "), name
                assert says in message, name
                assert "\n" not in message, name
            assert files_of(home) == before  # nothing written, not even a staging copy
            assert registry.list_versions(root=home, model=MODEL) == [version]
            assert registry.aliases(root=home, model=MODEL) == {"champion": version}
            champion = registry.resolve(root=home, model=MODEL, ref="champion")
            assert folder_of(champion).endswith(f"/{version}")
            assert [c.reason for c in registry.history(root=home, model=MODEL)] == ["first"]
            assert registry.get_version(root=home, model=MODEL, version=version)["tag"] == "a"
            registry.check_version(root=home, model=MODEL, version=version)


def test_leftovers_of_writers_that_died_long_ago_are_swept_from_the_bucket(
    home: str, prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry_store, "STALE_AFTER_S", 2)  # "long ago", in seconds, here
    fs, base = pafs.FileSystem.from_uri(home)
    staging = f"{base}/registry/{MODEL}/.staging"
    with fs.open_output_stream(f"{staging}/dead/weights.safetensors") as out:
        out.write(b"half")
    dead_at = fs.get_file_info(f"{staging}/dead/weights.safetensors").mtime.timestamp()
    deadline = time.monotonic() + 10
    while time.time() <= dead_at + 2.05:  # until "dead" is past the 2 s (bucket times: whole s)
        assert time.monotonic() < deadline, "the clock did not move"
        time.sleep(0.05)
    with fs.open_output_stream(f"{staging}/alive/weights.safetensors") as out:
        out.write(b"being written")
    model_dir = make_model_dir(tmp_path / "m", tag="a")
    registry.register(root=home, model=MODEL, model_dir=str(model_dir), metadata={"tag": "a"})
    assert not _exists(fs, f"{staging}/dead/weights.safetensors")
    assert _exists(fs, f"{staging}/alive/weights.safetensors")


# Concurrent writers: real processes --------------------------------------------------------------


def challenge_rounds(env: dict[str, str], home: str, name: str, rounds: int, start: Any) -> None:
    """A training run in a loop, in its own process: note the champion, register a challenger of
    its own, promote it by compare-and-set against the champion it noted. Writes what it did.

    Both writers start each round together and note the champion before either registers, so
    every round is a real race: two challengers judged against the same champion."""
    os.environ.update(env)  # before Prefect loads: its settings come from the environment
    done = []
    for i in range(rounds):
        tag = f"{name}-{i}"
        model_dir = make_model_dir(Path(env["WORK"]) / tag, tag=tag)
        start.wait(timeout=60)  # the round starts when the other writer has finished the last
        seen = registry.aliases(root=home, model=MODEL).get("champion")
        start.wait(timeout=60)  # both have noted the champion
        version = registry.register(root=home, model=MODEL, model_dir=str(model_dir),
                                    metadata={"tag": tag})  # fmt: skip
        try:
            registry.set_alias(root=home, model=MODEL, alias="champion", version=version,
                               reason=f"judged against {seen}", expect=seen)  # fmt: skip
            promoted = True
        except registry.AliasMoved:
            promoted = False
        done.append({"tag": tag, "version": version, "promoted": promoted, "seen": seen})
    Path(env["WORK"], f"{name}.json").write_text(json.dumps(done))


def writer_env(prefect_api: str, work: Path) -> dict[str, str]:
    """What a writer process needs in its environment: the bucket's and Prefect's settings."""
    return {**AWS_ENV, "PREFECT_API_URL": prefect_api, "WORK": str(work),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}  # fmt: skip


def run_writers(
    processes: ForkServerContext, target: Any, *, env: dict[str, str], home: str, count: int
) -> dict[str, list[dict[str, Any]]]:
    """Start two writers that meet at a barrier (`start`), wait for both, read what each did."""
    start = processes.Barrier(2)
    workers = {
        name: processes.Process(target=target, args=(env, home, name, count, start))
        for name in ("w1", "w2")
    }
    for worker in workers.values():
        worker.start()
    for worker in workers.values():
        worker.join(timeout=120)
        assert worker.exitcode == 0
    return {name: json.loads(Path(env["WORK"], f"{name}.json").read_text()) for name in workers}


def test_two_processes_promoting_on_a_bucket_never_share_or_mix_a_version_and_lose_no_move(
    processes: ForkServerContext, home: str, prefect_api: str, tmp_path: Path
) -> None:
    rounds = 5
    env = writer_env(prefect_api, tmp_path)
    did = run_writers(processes, challenge_rounds, env=env, home=home, count=rounds)
    runs = [run for runs in did.values() for run in runs]
    # one number per registration, none shared, none skipped; each holds its writer's files
    assert sorted(run["version"] for run in runs) == list(range(1, 2 * rounds + 1))
    assert assert_whole(home, MODEL) == list(range(1, 2 * rounds + 1))
    assert_each_holds_its_own(home, runs)
    # every promotion a writer made is in the history, each replacing the champion it was judged
    # against, each starting where the one before ended
    changes = registry.history(root=home, model=MODEL)
    assert sorted(c.to_version for c in changes) == sorted(
        run["version"] for run in runs if run["promoted"]
    )
    assert all(c.reason == f"judged against {c.from_version}" for c in changes)
    assert all(b.from_version == a.to_version for a, b in itertools.pairwise(changes))
    # every round was a race against one champion: exactly one of the two won it, and the two
    # versions of a round are one writer's each
    for i in range(rounds):
        pair = [run for run in runs if run["tag"].endswith(f"-{i}")]
        assert len({run["seen"] for run in pair}) == 1, pair
        assert sorted(run["promoted"] for run in pair) == [False, True], pair
        assert sorted(run["version"] for run in pair) == [2 * i + 1, 2 * i + 2], pair
    assert len(changes) == rounds


@contextlib.contextmanager
def no_lock(place: object) -> Iterator[None]:
    """What every writer holds once its lease has lapsed: nothing."""
    yield


def register_without_the_lock(
    env: dict[str, str], home: str, name: str, count: int, start: Any
) -> None:
    """Register `count` versions as if every writer's lease had lapsed mid-copy: no lock at all."""
    os.environ.update(env)
    registry_lock.hold = no_lock
    done = []
    start.wait(timeout=60)
    for i in range(count):
        tag = f"{name}-{i}"
        model_dir = make_model_dir(Path(env["WORK"]) / tag, tag=tag)
        version = registry.register(root=home, model=MODEL, model_dir=str(model_dir),
                                    metadata={"tag": tag})  # fmt: skip
        done.append({"tag": tag, "version": version})
    Path(env["WORK"], f"{name}.json").write_text(json.dumps(done))


def test_publishing_on_a_bucket_never_shares_or_mixes_a_version_even_when_the_lock_is_lost(
    processes: ForkServerContext, home: str, prefect_api: str, tmp_path: Path
) -> None:
    count = 8
    env = writer_env(prefect_api, tmp_path)
    did = run_writers(processes, register_without_the_lock, env=env, home=home, count=count)
    runs = [run for runs in did.values() for run in runs]
    numbers = [run["version"] for run in runs]
    assert len(set(numbers)) == len(numbers) == 2 * count  # never one number for two writers
    assert sorted(numbers) == assert_whole(home, MODEL)  # every one whole, and listed
    assert_each_holds_its_own(home, runs)
    print(f"{2 * count} versions, numbers up to {max(numbers)}: {max(numbers) - 2 * count} skipped")


def publish_forever(env: dict[str, str], home: str, model: str, ready: Any) -> None:
    """Register versions until killed; say when warm (Prefect loaded, the bucket reached)."""
    os.environ.update(env)
    for i in itertools.count():
        tag = f"{os.getpid()}-{i}"
        model_dir = make_model_dir(Path(env["WORK"]) / tag, tag=tag, size=1 << 17)
        registry.register(root=home, model=model, model_dir=str(model_dir), metadata={"tag": tag})
        ready.set()


def publishing_started(fs: pafs.FileSystem, folder: str) -> bool:
    """Whether a version folder is there without its metadata.json: a copy in progress."""
    found = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    numbers = [int(i.base_name) for i in found if i.base_name.isdigit()]
    return bool(numbers) and not _exists(fs, f"{folder}/{max(numbers)}/metadata.json")


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def test_a_writer_killed_at_random_moments_on_a_bucket_leaves_only_whole_versions_listed(
    processes: ForkServerContext, home: str, prefect_api: str, tmp_path: Path
) -> None:
    env = writer_env(prefect_api, tmp_path)
    rng = random.Random(0)
    fs, base = pafs.FileSystem.from_uri(home)
    trials, interrupted = 6, 0
    for trial in range(trials):
        # a model per trial: a killed writer holds its Prefect lease until it lapses (~75 s),
        # which would only make the next trial wait
        model = f"killed{trial}"
        folder = f"{base}/registry/{model}"
        ready = processes.Event()
        child = processes.Process(target=publish_forever, args=(env, home, model, ready))
        child.start()
        assert ready.wait(timeout=60)
        if trial % 2:  # at a random moment
            time.sleep(rng.uniform(0.0, 0.6))
        else:  # or as soon as a version is being copied into its folder
            deadline = time.monotonic() + 10
            while not publishing_started(fs, folder) and time.monotonic() < deadline:
                pass
        child.kill()  # SIGKILL: no cleanup, no finally blocks
        child.join()
        listed = assert_whole(home, model)
        assert listed  # the first registration, at least, completed
        found = fs.get_file_info(pafs.FileSelector(folder))
        numbered = {int(i.base_name) for i in found if i.base_name.isdigit()}
        interrupted += bool(numbered - set(listed))  # a half-copied version, not listed
    print(f"{trials} kills, {interrupted} in the middle of copying a version into its folder")
    assert interrupted >= 1
