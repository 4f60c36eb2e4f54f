"""`driftloop demo` as a newcomer runs it after `make demo`, and the Prefect UI it leaves behind,
read in a real browser (Debian's Chromium, driven by Playwright).

The demo runs once for the module, on its own stack (free ports, its own home): the whole loop,
with the retraining started by the trigger. Screenshots of the UI are kept in `.test-output/ui/`.
"""

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import CHROMIUM_ARGS, api, find_chromium, free_port

from tasks import registry

pytestmark = pytest.mark.integration

DRIFTLOOP = str(Path(sys.executable).parent / "driftloop")
SCREENSHOTS = Path(__file__).resolve().parents[1] / ".test-output" / "ui"


@dataclass
class DemoRun:
    root: Path
    env: dict[str, str]
    done: subprocess.CompletedProcess[str]
    summary: dict[str, Any]
    ui: str  # the Prefect UI's address

    def driftloop(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([DRIFTLOOP, *args], cwd=self.root, env=self.env,
                              capture_output=True, text=True, timeout=300, check=False)  # fmt: skip

    @property
    def api(self) -> str:
        return f"{self.ui}/api"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    root = tmp_path_factory.mktemp("demo")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DRIFTLOOP_", "PREFECT_API", "RAY_ADDRESS", "RAY_AUTH"))
    }
    prefect_port = free_port()
    env |= {
        "DRIFTLOOP_HOME": str(root / "home"),
        "DRIFTLOOP_STACK__PREFECT_PORT": str(prefect_port),
        "DRIFTLOOP_STACK__RAY_PORT": str(free_port()),
        "DRIFTLOOP_STACK__DASHBOARD_PORT": str(free_port()),
        "DRIFTLOOP_STACK__RUNNER_PORT": str(free_port()),
        "DRIFTLOOP_SERVING__PORT": str(free_port()),
        "DRIFTLOOP_TRAINING__EPOCHS": "5",
    }
    done = subprocess.run(
        [DRIFTLOOP, "demo", "--json"],
        cwd=root, env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    run = DemoRun(root, env, done, {}, f"http://127.0.0.1:{prefect_port}")
    try:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
        run.summary = json.loads(done.stdout)
        yield run
    finally:
        run.driftloop("down")


def test_the_demo_closes_the_loop_retraining_by_itself_with_no_request_failed(
    demo_run: DemoRun,
) -> None:
    found, root = demo_run.summary, demo_run.root
    assert (root / "driftloop.yaml").exists()
    assert [s["stage"].split(":")[0] for s in found["stages"]] == [
        "stack", "train", "serve", "clean traffic, then the monitor",
        "drifted traffic with feedback labels, then the monitor", "retraining",
        "canary of v1, the old world's model",
    ]  # fmt: skip
    assert found["first"] == 1
    assert found["monitor"]["clean"]["decision"] == "hold"
    assert found["monitor"]["drifted"]["decision"] == "retrain"
    assert found["retraining_state"] == "COMPLETED"
    assert found["retrained"] == 2
    # the source file never changed: the labelled traffic alone taught v2 the new world
    assert found["promoted"] is True, (found["gate"], found["stages"][5])
    assert found["served"] == 2
    world = found["new_world"]
    assert world["v2"] - world["v1"] > 0.3, world
    home = root / "home"
    fingerprints = {registry.get_version(root=str(home), model="churn", version=v)[
        "data_fingerprint"] for v in (1, 2)}  # fmt: skip
    assert len(fingerprints) == 1
    assert sorted(p.name for p in (root / "data").iterdir()) == ["churn.parquet"]
    during = found["during_retraining"]
    assert during["answered"] > 0
    assert during["failed"] == 0
    assert found["traffic"]["failed"] == 0
    # past the gate, v2 answered a canary's share of the labelled traffic before it served alone
    moves = registry.history(root=str(home), model="churn")
    promoted = [m for m in moves if m.alias == "champion" and m.to_version == 2]
    assert [m.reason.split(":")[0] for m in promoted] == ["canary promoted"], moves
    # the old world's model as a canary: rolled back by itself, no request failed
    canary = found["canary"]
    assert canary["status"] == "rolled_back", canary
    assert "worse than the champion with confidence" in canary["reason"]
    assert canary["failed"] == 0
    assert canary["versions"] == [1, 2]  # v1 did answer its share, then v2 alone
    assert registry.champion(root=str(home), model="churn").version == 2  # type: ignore[union-attr]

    # The retraining was created by the automation, not by the demo
    runs = api(
        demo_run.api, "/flow_runs/filter", {"flow_runs": {"created_by": {"type_": ["AUTOMATION"]}}}
    )
    assert [r["parameters"]["model"] for r in runs] == ["churn"]
    assert runs[0]["state_type"] == "COMPLETED"

    # What a person read: one line per stage, the summary table, the URLs, where the logs are
    told = demo_run.done.stderr
    for line in ("▶ stack", "▶ train", "▶ retraining", "▶ canary of v1", "driftloop demo",
                 "churn: versions"):  # fmt: skip
        assert line in told, told[-3000:]
    assert f"Prefect UI:     {demo_run.ui}" in told
    assert "Traceback" not in told
    logs = Path(found["logs"])
    assert {"prefect.log", "ray.log", "deployments.log"} <= {p.name for p in logs.iterdir()}
    assert len(told.splitlines()) < 80, "the libraries' logs belong in files, not the terminal"


def test_a_broken_batch_stops_at_validation_in_one_line(demo_run: DemoRun) -> None:
    spike = ("--scenario", "missing_spike", "--out", "data/churn.parquet", "--rows", "3000")
    assert demo_run.driftloop("generate", *spike).returncode == 0
    refused = demo_run.driftloop("train")
    assert refused.returncode == 1, refused.stdout[-2000:] + refused.stderr[-2000:]
    error = refused.stderr[refused.stderr.rindex("driftloop: error: ") :]
    assert error.startswith("driftloop: error: validation of churn (3,000 rows, ")
    assert "problems: missing_values" in error.splitlines()[0]
    assert "null_shares_to_be_at_most on monthly_charges: " in error
    assert "Traceback" not in refused.stderr, refused.stderr[-4000:]


def triggered(run: DemoRun) -> list[dict[str, Any]]:
    """The flow runs an automation created (a trigger), not a person or a schedule."""
    by_automation = {"flow_runs": {"created_by": {"type_": ["AUTOMATION"]}}}
    return list(api(run.api, "/flow_runs/filter", by_automation))


def test_the_prefect_ui_shows_the_runs_the_triggered_retraining_and_the_artifacts(
    demo_run: DemoRun,
) -> None:
    from playwright.sync_api import sync_playwright

    chromium = find_chromium()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    (retrain,) = triggered(demo_run)
    assert retrain["name"].startswith("retrain: churn (request "), retrain["name"]
    names = {r["name"] for r in api(demo_run.api, "/flow_runs/filter", {"limit": 50})}
    assert {"train: churn", "monitor: churn"} <= names, names
    artifacts = {a["key"] for a in api(demo_run.api, "/artifacts/filter", {}) if a["key"]}
    wanted = {"validation-churn", "churn-learning-curve", "gate-churn", "model-card-churn",
              "drift-churn", "monitor-churn"}  # fmt: skip
    assert wanted <= artifacts, sorted(artifacts)

    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(60_000)
        try:
            page.goto(f"{demo_run.ui}/runs")
            for name in ("train: churn", "monitor: churn", retrain["name"]):
                page.get_by_text(name, exact=True).first.wait_for()
            page.screenshot(path=SCREENSHOTS / "runs.png", full_page=True)

            page.goto(f"{demo_run.ui}/runs/flow-run/{retrain['id']}")
            page.get_by_text(retrain["name"]).first.wait_for()
            page.get_by_text("Completed").first.wait_for()
            page.get_by_text("retrain-when-the-governor-asks").first.wait_for()  # its automation
            page.screenshot(path=SCREENSHOTS / "retraining-run.png", full_page=True)

            page.goto(f"{demo_run.ui}/artifacts")
            for key in sorted(wanted):
                page.get_by_text(key).first.wait_for()
            page.screenshot(path=SCREENSHOTS / "artifacts.png", full_page=True)
        except Exception:
            page.screenshot(path=SCREENSHOTS / "failed.png", full_page=True)
            raise
        finally:
            browser.close()
    shots = {p.name for p in SCREENSHOTS.iterdir()}
    assert shots == {"runs.png", "retraining-run.png", "artifacts.png"}
