"""The local stack on real processes: a Prefect server and a Ray head on free loopback ports.

One `up` is shared by the module (startup costs 10-25 s); the tests that change it run last.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flows import views
from tasks import stack
from tasks.stack import Service, StackError, processes

# Tests that start services (a real stack, or processes standing in for one) are `integration`.

LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as resp:
        return int(resp.status), resp.read().decode()


def accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rpartition(")")[2].split()[0] != "Z"


def descendants(pid: int) -> list[int]:
    return processes.descendants(pid)


def listening_addresses(pids: list[int]) -> set[str]:
    """Local addresses of the TCP sockets these processes listen on (from /proc)."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            target = os.readlink(fd) if fd.is_symlink() else ""
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                found.add(_decode_address(cols[1].split(":")[0]))
    return found


def _decode_address(hexaddr: str) -> str:
    raw = bytes.fromhex(hexaddr)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))  # little-endian words
    if len(words) == 4:
        return socket.inet_ntop(socket.AF_INET, words)
    return socket.inet_ntop(socket.AF_INET6, words)


def run_driver(env: dict[str, str], code: str) -> Any:
    """Run `code` with only `env` for Ray and Prefect: none of this process's RAY_*/PREFECT_*
    variables, and a fresh HOME (no ~/.ray/auth_token to fall back on)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PREFECT_"))}
    with tempfile.TemporaryDirectory() as home:
        done = subprocess.run(
            [sys.executable, "-c", code],
            env={**base, "HOME": home, **env},
            capture_output=True,
            text=True,
            timeout=90,  # a misconfigured Ray driver retries forever
            check=False,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def environ_of(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    return dict(entry.split("=", 1) for entry in entries if "=" in entry)


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return {"prefect_port": free_port(), "ray_port": free_port(), "dashboard_port": free_port()}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("driftloop-home")


# What a user's shell may hold that must not reach the local stack's services
ELSEWHERE = {
    "PREFECT_API_DATABASE_CONNECTION_URL": "postgresql+asyncpg://nobody@127.0.0.1:1/elsewhere",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "true",
    "RAY_AUTH_TOKEN": "a-token-of-another-cluster",
}


@pytest.fixture(scope="module")
def user_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """HOME while `up` runs: nothing of the stack may land in it (no ~/.ray/auth_token)."""
    return tmp_path_factory.mktemp("user-home")


@pytest.fixture(scope="module")
def running(home: Path, ports: dict[str, int], user_home: Path) -> Iterator[stack.StackStatus]:
    started = time.monotonic()
    with pytest.MonkeyPatch.context() as env:
        for name, value in {**ELSEWHERE, "HOME": str(user_home)}.items():
            env.setenv(name, value)
        status = stack.up(home=home, **ports)
    print(f"stack up in {time.monotonic() - started:.1f} s")
    yield status
    stack.down(home=home)


# --- up and what it starts ---------------------------------------------------------------------


@pytest.mark.integration
def test_up_starts_prefect_and_ray_that_answer_on_loopback(
    running: stack.StackStatus, ports: dict[str, int]
) -> None:
    assert running.running
    assert get(f"http://127.0.0.1:{ports['prefect_port']}/api/health") == (200, "true")
    status, page = get(f"http://127.0.0.1:{ports['prefect_port']}/")
    assert status == 200
    assert "<html" in page.lower()
    assert get(f"http://127.0.0.1:{ports['dashboard_port']}/")[0] == 200
    assert accepts(ports["ray_port"])


@pytest.mark.integration
def test_a_driver_with_the_connection_env_joins_the_stacks_ray(
    running: stack.StackStatus, home: Path
) -> None:
    code = (
        "import json, ray; ray.init(log_to_driver=False); "
        "two = ray.get(ray.remote(lambda: 1 + 1).remote()); "
        "print(json.dumps([two, [(n['NodeManagerAddress'], n['Alive']) for n in ray.nodes()]]))"
    )
    env = stack.connection_env(home=home)
    assert env["RAY_AUTH_MODE"] == "token"
    two, nodes = run_driver(env, code)
    assert two == 2
    assert nodes == [["127.0.0.1", True]]


@pytest.mark.integration
def test_a_flow_client_with_the_connection_env_talks_to_the_stacks_prefect(
    running: stack.StackStatus, home: Path
) -> None:
    code = (
        "import json; from prefect.settings import PREFECT_API_URL; "
        "print(json.dumps(PREFECT_API_URL.value()))"
    )
    assert run_driver(stack.connection_env(home=home), code) == running.prefect_api_url


@pytest.mark.integration
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the environment from /proc")
def test_the_prefect_server_keeps_sqlite_in_the_home_with_analytics_off(
    running: stack.StackStatus, home: Path
) -> None:
    pid = running.services["prefect"].pid
    assert pid
    environ = environ_of(pid)
    assert environ["PREFECT_HOME"] == str(home.resolve() / "prefect")
    assert environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert "PREFECT_API_DATABASE_CONNECTION_URL" not in environ  # the user's shell had one
    assert [p.name for p in (home / "prefect").glob("*.db")] == ["prefect.db"]


@pytest.mark.integration
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the environment from /proc")
def test_rays_session_files_and_token_stay_in_the_home(
    running: stack.StackStatus, home: Path, user_home: Path
) -> None:
    pid = running.services["ray"].pid
    assert pid
    token = home.resolve() / "run" / "ray_auth_token"
    assert stack.connection_env(home=home)["RAY_AUTH_TOKEN_PATH"] == str(token)
    assert token.stat().st_mode & 0o777 == 0o600
    assert len(token.read_text()) == 64
    environ = environ_of(pid)
    assert environ["RAY_AUTH_TOKEN_PATH"] == str(token)
    assert "RAY_AUTH_TOKEN" not in environ  # it would win over the token file
    assert list((home / "run" / "ray").glob("session_*/logs"))
    assert stack.ray_temp_dir(home=home).resolve() == home.resolve() / "run" / "ray"
    assert not (user_home / ".ray").exists()


@pytest.mark.integration
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads listeners from /proc")
def test_every_port_the_stack_listens_on_is_bound_to_loopback(
    running: stack.StackStatus,
) -> None:
    pids = [s.pid for s in running.services.values() if s.pid]
    family = pids + [child for pid in pids for child in descendants(pid)]
    addresses = listening_addresses(family)
    assert addresses
    assert addresses <= LOOPBACK


@pytest.mark.integration
def test_status_reports_both_services_with_their_urls(
    running: stack.StackStatus, home: Path, ports: dict[str, int]
) -> None:
    now = stack.status(home=home)
    assert set(now.services) == {"prefect", "ray"}
    assert all(s.running and s.healthy and s.pid for s in now.services.values())
    assert now.prefect_api_url == f"http://127.0.0.1:{ports['prefect_port']}/api"
    assert now.ray_address == f"127.0.0.1:{ports['ray_port']}"
    assert now.dashboard_url == f"http://127.0.0.1:{ports['dashboard_port']}"
    state = json.loads((home / "run" / "stack.json").read_text())
    assert {n: s["pid"] for n, s in state["services"].items()} == {
        n: s.pid for n, s in now.services.items()
    }
    # what `driftloop status` prints: how to sign in to the dashboard with the stack's token
    told = views.describe(now)
    token = stack.token_path(home=home)
    assert f"RAY_AUTH_TOKEN_PATH={token} ray get-auth-token" in told
    printed = subprocess.run(
        [str(Path(sys.executable).parent / "ray"), "get-auth-token"],
        env={**os.environ, "RAY_AUTH_TOKEN_PATH": str(token)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert printed.stdout.strip() == token.read_text().strip(), printed.stderr[-500:]


@pytest.mark.integration
def test_up_twice_reuses_the_running_services(
    running: stack.StackStatus, home: Path, ports: dict[str, int]
) -> None:
    again = stack.up(home=home, **ports)  # the same processes, not a restart:
    assert {n: s.pid for n, s in again.services.items()} == {
        n: s.pid for n, s in running.services.items()
    }


@pytest.mark.integration
def test_up_on_other_ports_while_the_stack_runs_is_refused(
    running: stack.StackStatus, home: Path, ports: dict[str, int]
) -> None:
    with pytest.raises(StackError, match="prefect already runs"):
        stack.up(home=home, **{**ports, "prefect_port": free_port()})


@pytest.mark.integration
def test_a_service_whose_process_died_is_forgotten_and_restarted_by_up(
    running: stack.StackStatus, home: Path, ports: dict[str, int]
) -> None:
    ray_pid = stack.status(home=home).services["ray"].pid
    prefect_pid = stack.status(home=home).services["prefect"].pid
    assert ray_pid
    assert prefect_pid
    family = descendants(ray_pid)
    os.killpg(ray_pid, signal.SIGKILL)  # a crash: the state file still names the pid
    for pid in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _wait(lambda: not stack.status(home=home).services["ray"].running)
    assert "RAY_ADDRESS" not in stack.connection_env(home=home)

    restarted = stack.up(home=home, **ports)
    assert restarted.services["ray"].pid not in (None, ray_pid)
    assert restarted.services["prefect"].pid == prefect_pid
    assert restarted.running


# --- down --------------------------------------------------------------------------------------


@pytest.mark.integration
def test_down_stops_what_up_started_and_leaves_another_ray_alone(
    running: stack.StackStatus, home: Path, ports: dict[str, int], ray_local: None
) -> None:
    import ray

    pids = [s.pid for s in stack.status(home=home).services.values() if s.pid]
    family = pids + [child for pid in pids for child in descendants(pid)]

    assert stack.down(home=home) == ["ray", "prefect"]

    assert not [pid for pid in family if alive(pid)]
    assert not [port for port in ports.values() if accepts(port)]
    assert not (home / "run" / "stack.json").exists()
    assert not stack.ray_temp_dir(home=home).is_symlink()  # the /tmp link goes with the stack
    assert stack.connection_env(home=home) == {}
    assert ray.get(ray.remote(lambda: "still here").remote()) == "still here"


def test_down_with_nothing_running_is_a_no_op(tmp_path: Path) -> None:
    assert stack.down(home=tmp_path) == []
    assert list(tmp_path.iterdir()) in ([], [tmp_path / "run"])  # nothing written but its folder
    assert not stack.status(home=tmp_path).running


# --- failures ----------------------------------------------------------------------------------


def test_a_taken_port_fails_fast_naming_the_port_and_service_and_starts_nothing(
    tmp_path: Path,
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        with pytest.raises(StackError, match=rf"port {taken} .*ray, dashboard"):
            stack.up(
                home=tmp_path,
                prefect_port=free_port(),
                ray_port=free_port(),
                dashboard_port=taken,
            )
    assert stack.status(home=tmp_path).services == {}
    assert not stack.ray_temp_dir(home=tmp_path).is_symlink()


@pytest.mark.integration
def test_a_service_that_exits_while_starting_reports_the_tail_of_its_log(
    tmp_path: Path,
) -> None:
    broken = Service(
        name="broken",
        command=(sys.executable, "-c", "print('bad config: no such table', flush=True); exit(3)"),
        ports={},
        url="",
        probes=(f"http://127.0.0.1:{free_port()}/",),
    )
    with pytest.raises(StackError, match=r"broken exited with 3 while starting.*no such table"):
        stack.start(home=tmp_path, services=[broken], timeout_s=30)
    assert stack.status(home=tmp_path).services == {}


@pytest.mark.integration
def test_a_service_that_never_answers_times_out_and_is_stopped(tmp_path: Path) -> None:
    silent = Service(
        name="silent",
        command=(sys.executable, "-c", "import time; print('waiting', flush=True); time.sleep(60)"),
        ports={},
        url="",
        probes=(f"http://127.0.0.1:{free_port()}/",),
        stop_grace_s=2,
    )
    # long enough for a loaded machine to start Python and print, so the log tail has its line
    with pytest.raises(StackError, match=r"silent did not answer in time.*waiting"):
        stack.start(home=tmp_path, services=[silent], timeout_s=5)
    assert stack.status(home=tmp_path).services == {}


@pytest.mark.integration
def test_a_recorded_pid_now_used_by_another_process_is_not_treated_as_ours(
    tmp_path: Path,
) -> None:
    record = {
        "name": "prefect",
        "pid": os.getpid(),  # alive, but not the recorded command nor a group leader
        "command": ["/nowhere/prefect", "server", "start"],
        "ports": {"prefect": 1},
        "url": "http://127.0.0.1:1",
        "probes": [],
        "connect": {"PREFECT_API_URL": "http://127.0.0.1:1/api"},
        "log": str(tmp_path / "prefect.log"),
    }
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "stack.json").write_text(
        json.dumps({"version": 1, "services": {"prefect": record}})
    )
    assert not stack.status(home=tmp_path).services["prefect"].running
    assert stack.connection_env(home=tmp_path) == {}
    assert stack.down(home=tmp_path) == []
    assert not (tmp_path / "run" / "stack.json").exists()


def sleeper(name: str) -> Service:
    """A real long-running process that answers at once (it has no probes)."""
    return Service(
        name=name,
        command=(sys.executable, "-c", "import time; time.sleep(120)", name),
        ports={},
        url="",
        stop_grace_s=2,
    )


@pytest.mark.integration
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds marked processes through /proc")
def test_a_corrupt_state_file_says_how_to_recover_and_down_force_stops_the_stack(
    tmp_path: Path,
) -> None:
    started = stack.start(home=tmp_path, services=[sleeper("one"), sleeper("two")])
    pids = [s.pid for s in started.services.values()]
    assert all(pids)
    (tmp_path / "run" / "stack.json").write_text('{"version": 1, "services": ')  # cut short

    for attempt in (stack.status, stack.down, stack.connection_env):
        with pytest.raises(StackError) as caught:
            attempt(home=tmp_path)
        assert "stack.json is corrupt" in str(caught.value)
        assert "`driftloop down --force`" in str(caught.value)
        assert "\n" not in str(caught.value)
    assert all(alive(pid) for pid in pids if pid)  # nothing was stopped by guesswork

    assert sorted(stack.down(home=tmp_path, force=True)) == ["one", "two"]
    assert not [pid for pid in pids if pid and alive(pid)]
    assert not (tmp_path / "run" / "stack.json").exists()
    assert stack.status(home=tmp_path).services == {}


@pytest.mark.integration
def test_down_force_leaves_another_homes_stack_alone(tmp_path: Path) -> None:
    other = stack.start(home=tmp_path / "other", services=[sleeper("other")])
    try:
        assert stack.down(home=tmp_path / "mine", force=True) == []
        assert other.services["other"].pid
        assert alive(other.services["other"].pid)
    finally:
        assert stack.down(home=tmp_path / "other") == ["other"]


def test_a_foreign_folder_where_rays_short_link_goes_is_refused_and_left_alone(
    tmp_path: Path,
) -> None:
    link = stack.ray_temp_dir(home=tmp_path)
    assert link != tmp_path.resolve() / "run" / "ray"  # a home too deep for Ray's sockets
    link.mkdir()
    try:
        with pytest.raises(StackError, match=r"exists and is not driftloop's link") as caught:
            stack.up(
                home=tmp_path,
                prefect_port=free_port(),
                ray_port=free_port(),
                dashboard_port=free_port(),
            )
        assert "\n" not in str(caught.value)
        assert link.is_dir()
        assert not link.is_symlink()
        assert stack.status(home=tmp_path).services == {}
    finally:
        link.rmdir()


@pytest.mark.parametrize(
    ("home", "local"),
    [
        (".driftloop", Path(".driftloop")),
        ("/srv/driftloop", Path("/srv/driftloop")),
        ("file:///srv/drift%20loop", Path("/srv/drift loop")),
        ("file://localhost/srv/dl", Path("/srv/dl")),
        ("s3://bucket/driftloop", None),
        ("gs://bucket/driftloop", None),
    ],
)
def test_the_stack_needs_a_local_home(home: str, local: Path | None) -> None:
    if local is not None:
        assert stack.local_home(home) == local
        return
    with pytest.raises(StackError, match="is not a local folder") as caught:
        stack.local_home(home)
    assert "\n" not in str(caught.value)


# --- helpers -----------------------------------------------------------------------------------


def _wait(condition: Any, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)
