"""A user's own Parquet table with another schema works by writing only a driftloop.yaml: here
scikit-learn's diabetes table (regression, shipped with the package), one column made categorical,
through the `driftloop` command a user types (no stack: a temporary Prefect server, a local Ray)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.settings import load_settings

pytestmark = pytest.mark.integration
DRIFTLOOP = str(Path(sys.executable).parent / "driftloop")
CONFIG = """\
dataset:
  name: diabetes
  source: tables/diabetes.parquet
  target: progression
  task: regression
training:
  epochs: 5
  num_workers: 2
  use_gpu: false
"""


def diabetes() -> pa.Table:
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True, scaled=False).frame.rename(
        columns={"target": "progression"}
    )
    frame["sex"] = frame["sex"].map({1.0: "F", 2.0: "M"})  # a categorical column, as strings
    return pa.Table.from_pandas(frame, preserve_index=False)


def test_a_regression_table_of_the_users_own_trains_with_only_a_config(tmp_path: Path) -> None:
    (tmp_path / "tables").mkdir()
    pq.write_table(diabetes(), tmp_path / "tables" / "diabetes.parquet")
    (tmp_path / "driftloop.yaml").write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLOOP_")}

    def driftloop(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([DRIFTLOOP, *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600, check=False)  # fmt: skip

    checked = driftloop("validate")
    assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr[-3000:]
    trained = driftloop("train")
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-3000:]
    models = json.loads(driftloop("models", "--json").stdout)
    assert models["model"] == "diabetes"
    assert models["aliases"] == {"champion": 1}, models  # it beat the mean: the first champion
    (version,) = models["versions"]
    assert {"rmse", "mae"} <= set(version["metrics"])
    assert 0 < version["metrics"]["rmse"] < 70  # the target's spread is 77: it learned something
    # the features were inferred from the Parquet schema: `sex` categorical, the rest numeric
    features = load_settings(tmp_path / "driftloop.yaml").features
    assert features.categorical == ["sex"]
    assert sorted(features.numeric) == ["age", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
