"""The `driftloop` command as a user sees it: real subprocesses, exit codes, one-line reasons.

No Ray and no Prefect server here: these are the commands that answer on their own (init,
generate, validate, models, deploy, rollback) and the stack commands' refusals.
"""

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tasks import registry
from tasks.settings import load_settings

DRIFTLOOP = str(Path(sys.executable).parent / "driftloop")
REPO = Path(__file__).resolve().parents[1]


class Project:
    """A folder made by `driftloop init`, with its own DRIFTLOOP_HOME."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLOOP_")}
        self.env["DRIFTLOOP_HOME"] = str(self.home)

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [DRIFTLOOP, *args],
            cwd=self.root,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


def fails_with_one_line(done: subprocess.CompletedProcess[str], says: str) -> None:
    """Exit 1, and stderr is one line naming the problem: no traceback."""
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("driftloop: error: ")
    assert says in lines[0]
    assert "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    made = Project(tmp_path_factory.mktemp("cli"))
    done = made.run("init", "--rows", "3000")
    assert done.returncode == 0, done.stderr
    return made


# init and generate -------------------------------------------------------------------------------


def test_init_writes_a_config_that_loads_with_its_data(project: Project) -> None:
    settings = load_settings(project.root / "driftloop.yaml")
    assert settings.dataset.target == "churned"
    assert Path(settings.dataset.source) == project.root / "data" / "churn.parquet"
    assert "contract" in settings.features.categorical
    assert "customer_id" not in settings.features.all


def test_init_does_not_overwrite_a_config_without_force(project: Project) -> None:
    before = (project.root / "driftloop.yaml").read_text()
    fails_with_one_line(project.run("init"), "pass --force to overwrite it")
    assert (project.root / "driftloop.yaml").read_text() == before


def test_demo_refuses_a_folder_whose_config_it_did_not_write_and_changes_nothing(
    project: Project,
) -> None:
    config, data = project.root / "driftloop.yaml", project.root / "data" / "churn.parquet"
    before = (config.read_text(), data.read_bytes())
    fails_with_one_line(project.run("demo"), "is not the demo's (the demo rewrites its data)")
    assert (config.read_text(), data.read_bytes()) == before


def test_generate_writes_a_batch_of_the_named_scenario(project: Project) -> None:
    done = project.run("generate", "--scenario", "schema_break", "--kind", "rename")
    assert done.returncode == 0, done.stderr
    schema = pq.read_schema(project.root / "data" / "schema_break.parquet")
    assert "monthly_charges_v2" in schema.names
    assert "monthly_charges" not in schema.names


def test_generate_refuses_an_unknown_scenario_naming_the_allowed_ones(project: Project) -> None:
    fails_with_one_line(
        project.run("generate", "--scenario", "meteor_strike"),
        "unknown scenario 'meteor_strike'; allowed: clean, covariate_shift",
    )


# validate ----------------------------------------------------------------------------------------


def test_validate_passes_the_clean_source(project: Project) -> None:
    done = project.run("validate")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "passed" in done.stdout.splitlines()[0]


def test_validate_fails_a_missing_value_spike_in_one_line(project: Project) -> None:
    made = project.run("generate", "--scenario", "missing_spike", "--out", "spike.parquet")
    assert made.returncode == 0, made.stderr
    done = project.run("validate", "--data", "spike.parquet")
    fails_with_one_line(done, "validation failed")
    assert "monthly_charges" in done.stdout  # the report names the columns, on stdout


def test_validate_fails_a_corrupt_file_in_one_line(project: Project) -> None:
    whole = (project.root / "data" / "churn.parquet").read_bytes()
    (project.root / "cut.parquet").write_bytes(whole[: len(whole) // 2])
    fails_with_one_line(project.run("validate", "--data", "cut.parquet"), "cut.parquet")


def test_a_bad_environment_value_is_one_line_naming_the_variable(project: Project) -> None:
    done = project.run("validate", DRIFTLOOP_DATASET__SLICES="contract")
    fails_with_one_line(done, "DRIFTLOOP_DATASET__SLICES='contract': dataset.slices takes a list")


# models, deploy, rollback ------------------------------------------------------------------------


def register(project: Project, tag: str, roc_auc: float) -> int:
    model_dir = project.root / f"model-{tag}"
    model_dir.mkdir()
    for name in registry.MODEL_FILES:
        (model_dir / name).write_bytes(f"{name}:{tag}".encode())
    return registry.register(
        root=str(project.home),
        model="churn",
        model_dir=str(model_dir),
        metadata={"metrics": {"roc_auc": roc_auc}},
    )


def champion(project: Project) -> int | None:
    return registry.aliases(root=str(project.home), model="churn").get("champion")


def test_models_deploy_and_rollback_move_the_champion(project: Project) -> None:
    assert "no versions of 'churn'" in project.run("models").stdout
    assert [register(project, "a", 0.71), register(project, "b", 0.74)] == [1, 2]
    registry.set_alias(
        root=str(project.home), model="churn", alias="candidate", version=1, reason="t"
    )

    listed = project.run("models")
    assert listed.returncode == 0, listed.stderr
    assert "roc_auc 0.7100" in listed.stdout
    assert "roc_auc 0.7400" in listed.stdout

    done = project.run("deploy", "--version", "2")
    assert (done.returncode, done.stdout.strip()) == (0, "champion: none -> v2")
    assert champion(project) == 2
    done = project.run("deploy", "--alias", "candidate")
    assert (done.returncode, done.stdout.strip()) == (0, "champion: v2 -> v1")
    assert champion(project) == 1
    done = project.run("rollback")
    assert (done.returncode, done.stdout.strip()) == (0, "champion: v1 -> v2")
    assert champion(project) == 2
    assert "candidate" in project.run("models").stdout

    fails_with_one_line(project.run("deploy", "--version", "0"), "has no version 0; versions: 1, 2")
    fails_with_one_line(project.run("deploy", "--alias", "nope"), "has no alias 'nope'")
    fails_with_one_line(project.run("deploy"), "give exactly one of --version N or --alias NAME")
    assert champion(project) == 2  # no failed command moved it
    shown = project.run("status")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[-2] == "champion: churn v2"
    assert shown.stdout.splitlines()[-1].startswith("prediction log and labels: 0 files")


def test_monitor_without_a_champion_says_to_train_one_first(tmp_path: Path) -> None:
    fresh = Project(tmp_path)
    assert fresh.run("init", "--rows", "200").returncode == 0
    for args in (("monitor",), ("monitor", "--json")):
        fails_with_one_line(fresh.run(*args), "no champion to monitor yet; train one first")


# usage errors and the stack's refusals -------------------------------------------------------


def test_an_unknown_option_is_a_usage_error_with_exit_2(project: Project) -> None:
    done = project.run("validate", "--colour", "blue")
    assert done.returncode == 2
    assert "--colour" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("command", ["up", "down", "status"])
def test_the_stack_commands_refuse_an_object_store_home(project: Project, command: str) -> None:
    fails_with_one_line(
        project.run(command, DRIFTLOOP_HOME="s3://bucket/driftloop"), "is not a local folder"
    )


def test_a_corrupt_stack_state_says_how_to_recover_and_down_force_recovers(
    project: Project,
) -> None:
    state = project.home / "run" / "stack.json"
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text('{"services": {"prefect": ')
    fails_with_one_line(project.run("status"), "`driftloop down --force`")
    fails_with_one_line(project.run("down"), "is corrupt")
    done = project.run("down", "--force")
    assert (done.returncode, done.stdout.strip()) == (0, "nothing was running"), (
        done.stdout + done.stderr
    )
    assert not state.exists()
    assert "nothing runs under" in project.run("status").stdout


def test_down_force_recovers_a_corrupt_state_while_another_app_answers_on_the_serving_port(
    project: Project,
) -> None:
    """The flake of a busy machine: another stack's app (the same model's name) answered on the
    serving port, so `down` asked this home's corrupt state for its Ray, and exited 1."""

    class Healthz(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"status": "ok", "model": "churn", "version": 7}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Healthz)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        state = project.home / "run" / "stack.json"
        state.parent.mkdir(parents=True, exist_ok=True)
        state.write_text('{"services": {"prefect": ')
        port = str(other.server_address[1])
        fails_with_one_line(project.run("down", DRIFTLOOP_SERVING__PORT=port), "is corrupt")
        done = project.run("down", "--force", DRIFTLOOP_SERVING__PORT=port)
        assert (done.returncode, done.stdout.strip()) == (0, "nothing was running"), (
            done.stdout + done.stderr
        )
        assert not state.exists()
    finally:
        other.shutdown()


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_clean_stops_the_stack_before_deleting_its_state() -> None:
    done = subprocess.run(
        ["make", "-n", "clean"], cwd=REPO, capture_output=True, text=True, check=True
    )
    steps = done.stdout.splitlines()
    down = next(i for i, step in enumerate(steps) if "driftloop down" in step)
    delete = next(i for i, step in enumerate(steps) if step.startswith("rm -rf"))
    assert down < delete
    assert ".driftloop" in steps[delete]


def test_every_command_is_listed_in_help(project: Project) -> None:
    done = project.run("--help")
    assert done.returncode == 0
    listed = {m[1] for m in re.finditer(r"^│ (\w+) {2,}", done.stdout, flags=re.MULTILINE)}
    assert listed == {"init", "generate", "up", "down", "status", "validate", "train", "models",
                      "deploy", "rollback", "monitor", "demo"}  # fmt: skip


def test_make_help_lists_every_documented_target() -> None:
    makefile = (REPO / "Makefile").read_text()
    documented = set(re.findall(r"^([a-z-]+):.*## ", makefile, flags=re.MULTILINE))
    phony = set(re.search(r"^\.PHONY: (.*)$", makefile, flags=re.MULTILINE)[1].split())  # type: ignore[index]
    assert documented == phony  # every target a person may run says what it does
    done = subprocess.run(["make", "--no-print-directory", "help"], cwd=REPO,
                          capture_output=True, text=True, check=True)  # fmt: skip
    shown = {line.split()[0] for line in re.sub(r"\x1b\[[0-9;]*m", "", done.stdout).splitlines()}
    assert shown == documented


def test_a_run_failing_with_a_driftloop_error_is_logged_without_its_traceback() -> None:
    import logging

    from tasks.errors import RUN_LOGGERS, DriftloopError, quiet_expected_failures

    before = {name: list(logging.getLogger(name).filters) for name in RUN_LOGGERS}
    quiet_expected_failures()
    quiet_expected_failures()  # twice is once
    logger = logging.getLogger(RUN_LOGGERS[0])
    assert len(logger.filters) == len(before[logger.name]) + 1
    lines = {}
    for error in (DriftloopError("validation of churn FAILED"), KeyError("bug")):
        try:
            raise error
        except Exception:
            record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0,
                                       "Encountered exception", (), sys.exc_info())  # fmt: skip
        assert logger.filter(record)  # kept: only its traceback may go
        lines[type(error).__name__] = logging.Formatter().format(record)
    assert lines["DriftloopError"] == "Encountered exception"  # its message says what was wrong
    assert "Traceback" in lines["KeyError"]  # anything else keeps its traceback
    assert "KeyError: 'bug'" in lines["KeyError"]
    for name, kept in before.items():  # leave Prefect's loggers as the other tests found them
        for added in [f for f in logging.getLogger(name).filters if f not in kept]:
            logging.getLogger(name).removeFilter(added)
