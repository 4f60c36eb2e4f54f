"""The chaos soak (bench/soak.py), short: 3 minutes of traffic and labels while a Serve replica,
a Ray Train worker of the retraining and the deployments' runner are killed at random moments."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
SOAK = Path(__file__).resolve().parents[1] / "bench" / "soak.py"


@pytest.mark.timeout(1800)  # 3 minutes of traffic, after a first training; a retraining after it
def test_kills_at_random_moments_lose_no_answer_no_label_and_the_loop_still_retrains() -> None:
    done = subprocess.run(
        [sys.executable, str(SOAK), "--minutes", "3", "--seed", "1", "--json"],
        capture_output=True, text=True, timeout=1500, check=False,
    )  # fmt: skip
    assert done.stdout.strip(), done.stderr[-3000:]
    found = json.loads(done.stdout)
    assert {k["what"] for k in found["kills"]} == {
        "serve replica", "ray train worker", "deployments runner"
    }  # fmt: skip
    assert found["answered"] > 5_000
    assert found["missing"] == []  # every answered id is in the log...
    assert found["missing_count"] == 0
    assert found["duplicates"] == 0  # ...once
    assert found["labels_accepted"] > 1_000
    assert found["labels_missing"] == 0  # every label the API took is stored
    assert found["registry_problems"] == []
    assert found["champion"] in found["versions"]
    assert found["retraining"] is not None  # the loop went round: promoted or rejected
    assert found["retraining"]["status"] in ("promoted", "rejected")
    assert found["passed"] is True
    assert done.returncode == 0, done.stderr[-3000:]
