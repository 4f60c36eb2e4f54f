"""The training pipeline as a user runs it: a Prefect flow over real Ray, files and events."""

import json
import time
from pathlib import Path

import pyarrow as pa
import pytest

from tasks import events, registry, synthetic, validation

pytestmark = pytest.mark.integration


def project(tmp_path: Path, table: pa.Table) -> Path:
    """A driftloop.yaml with a small, fast training section, and its data and home."""
    synthetic.write_parquet(table, tmp_path / "data" / "churn.parquet")
    config = tmp_path / "driftloop.yaml"
    config.write_text(
        f"home: {tmp_path / 'home'}\n"
        "dataset:\n  name: churn\n  source: data/churn.parquet\n  target: churned\n"
        "  id: customer_id\n  timestamp: event_time\n  slices: [contract]\n"
        "training:\n  epochs: 3\n  batch_size: 512\n  num_workers: 2\n"
    )
    return config


def read_events(name: str) -> list[object]:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter

    wanted = EventFilter(event=EventNameFilter(name=[name]))
    with get_client(sync_client=True) as client:
        for _ in range(60):  # events are persisted asynchronously: poll for up to 30 s
            found = client.read_events(filter=wanted, limit=50).events
            if found:
                return list(found)
            time.sleep(0.5)
    return []


def test_a_leaked_target_fails_the_run_before_anything_is_trained_or_registered(
    prefect_server: None, ray_local: None, tmp_path: Path
) -> None:
    from flows.training import training_pipeline

    table = synthetic.generate(rows=3000, seed=3)
    leaky = table.append_column("churn_flag", table["churned"])  # the target under another name
    config = project(tmp_path, leaky)

    with pytest.raises(validation.ValidationFailed, match="churn_flag"):
        training_pipeline(config=str(config))

    home = tmp_path / "home"
    assert not (home / "ray").exists(), "nothing may train on data that failed validation"
    assert registry.list_versions(root=str(home), model="churn") == []
    reports = list((home / "reports" / "churn").glob("*/validation.json"))
    assert len(reports) == 1
    assert json.loads(reports[0].read_text())["success"] is False
    assert (reports[0].parent / "validation.html").exists()
    failed = read_events(events.VALIDATION_FAILED)
    assert failed, "the validation.failed event must reach the Prefect server"


def test_a_first_model_is_promoted_and_an_identical_retrain_is_rejected(
    prefect_server: None, ray_local: None, tmp_path: Path
) -> None:
    from flows.training import training_pipeline

    config = project(tmp_path, synthetic.generate(rows=6000, seed=5))
    home = str(tmp_path / "home")

    first = training_pipeline(config=str(config))
    assert first["decision"] == "promoted"
    assert registry.aliases(root=home, model="churn") == {"champion": 1}
    version = Path(registry.resolve(root=home, model="churn", ref="champion"))
    for name in ("weights.safetensors", "metadata.json", "suite.json", "reference.parquet"):
        assert (version / name).exists(), name
    assert first["roc_auc"] > 0.75  # the synthetic churn signal is learnable

    second = training_pipeline(config=str(config))  # same data, same seeds: no better model
    assert second["decision"] == "rejected"
    assert second["version"] is None
    assert registry.aliases(root=home, model="churn") == {"champion": 1}
    assert read_events(events.MODEL_PROMOTED)
    assert read_events(events.MODEL_REJECTED)
