"""The configuration: one typed object, environment overrides, and clear errors at load time."""

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.settings import ConfigError, StackConfig, load_settings, load_stack_settings


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with a small Parquet data set; no DRIFTLOOP_* variables leak in from outside."""
    for name in [n for n in os.environ if n.startswith("DRIFTLOOP_")]:
        monkeypatch.delenv(name)
    table = pa.table(
        {
            "customer_id": ["a", "b", "c", "d"],
            "event_time": pa.array([0, 1, 2, 3], pa.timestamp("us", tz="UTC")),
            "tenure": [1, 5, 7, 2],
            "charges": [10.0, 20.5, None, 3.0],
            "contract": ["monthly", "yearly", "monthly", None],
            "has_partner": [True, False, True, False],
            "churned": [0, 1, 0, 1],
            "spend": [1.5, 2.5, 3.5, 4.5],
            "tags": [["new"], [], None, ["gold", "new"]],  # a list: never a feature
        }
    )
    (tmp_path / "data").mkdir()
    pq.write_table(table, tmp_path / "data" / "churn.parquet")
    return tmp_path


def write_config(project: Path, text: str) -> Path:
    path = project / "driftloop.yaml"
    path.write_text(text)
    return path


BASE = """\
dataset:
  name: churn
  source: data/churn.parquet
  target: churned
  id: customer_id
  timestamp: event_time
"""


def test_features_are_inferred_from_the_schema_without_target_id_or_timestamp(
    project: Path,
) -> None:
    settings = load_settings(write_config(project, BASE))
    assert settings.features.numeric == ["tenure", "charges", "spend"]
    assert settings.features.categorical == ["contract", "has_partner"]


def test_declared_features_are_kept_as_written(project: Path) -> None:
    text = BASE + "  features:\n    numeric: [tenure]\n    categorical: [contract]\n"
    settings = load_settings(write_config(project, text))
    assert settings.features.all == ["tenure", "contract"]


def test_a_relative_source_is_resolved_against_the_config_folder(project: Path) -> None:
    settings = load_settings(write_config(project, BASE))
    assert Path(settings.dataset.source) == project / "data" / "churn.parquet"


def test_defaults_fill_every_section_the_file_leaves_out(project: Path) -> None:
    settings = load_settings(write_config(project, BASE))
    assert settings.training.num_workers == 2
    assert settings.training.use_gpu == "auto"
    assert settings.home == ".driftloop"


def test_environment_variables_override_the_file(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = BASE + "training:\n  epochs: 7\n  batch_size: 64\n"
    monkeypatch.setenv("DRIFTLOOP_TRAINING__EPOCHS", "3")
    monkeypatch.setenv("DRIFTLOOP_HOME", str(project / "state"))
    settings = load_settings(write_config(project, text))
    assert settings.training.epochs == 3
    assert settings.training.batch_size == 64  # the file's other keys survive the merge
    assert settings.home == str(project / "state")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            BASE.replace("target:", "traget:"),
            "dataset.traget: unknown key (did you mean 'target'?)",
        ),
        (BASE + "training:\n  epoch: 3\n", "training.epoch: unknown key (did you mean 'epochs'?)"),
        (BASE + "colour: blue\n", "colour: unknown key; allowed: home, dataset"),
        (BASE.replace("churned", "churn"), "dataset.target: column 'churn' is not in"),
        (BASE + "  slices: [region]\n", "dataset.slices: column 'region' is not in"),
        (
            BASE + "  features:\n    numeric: [tenur]\n",
            "dataset.features.numeric: column 'tenur' is not in",
        ),
        (BASE.replace("target: churned", "target: charges"), "which does not fit task"),
        (
            BASE.replace("target: churned", "target: contract") + "  task: regression\n",
            "column 'contract' has type string, which does not fit task 'regression'",
        ),
        (BASE + "  task: clustering\n", "dataset.task"),
        (BASE + "training:\n  num_workers: 0\n", "training.num_workers"),
        (BASE.replace("id: customer_id", "id: churned"), "dataset.id is the target column"),
        (
            BASE.replace("  target: churned\n", ""),
            "dataset.target: required: the column to predict",
        ),
        (
            BASE + "  features:\n    numeric: [contract]\n",
            "dataset.features.numeric: column 'contract' has type string; numeric features must "
            "be boolean, float, integer columns (list it under dataset.features.categorical)",
        ),
        (
            BASE + "  features:\n    categorical: [tags]\n",
            "dataset.features.categorical: column 'tags' has type list<element: string>; "
            "categorical features must be boolean, integer, string columns",
        ),
        (
            BASE + "  features:\n    numeric: [tenure]\n    categorical: [customer_id]\n",
            "dataset.features.categorical: 'customer_id' is dataset.id, which cannot also be a "
            "feature",
        ),
        (
            BASE + "  features:\n    numeric: [event_time]\n",
            "dataset.features.numeric: 'event_time' is dataset.timestamp",
        ),
        (
            BASE + "  features:\n    numeric: [tenure]\n    categorical: [tenure]\n",
            "dataset.features: 'tenure' is under both numeric and categorical; a feature has one "
            "kind",
        ),
        (BASE + "  slices: [churned]\n", "dataset.slices: 'churned' is the target"),
        (
            BASE + "  slices: [spend]\n",
            "dataset.slices: column 'spend' has type double; slices (evaluated per value) must be",
        ),
        (
            BASE.replace("timestamp: event_time", "timestamp: customer_id"),
            "dataset.timestamp is also dataset.id 'customer_id'",
        ),
        ("- just\n- a list\n", "expected a mapping"),
        ("dataset: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_configuration_fails_at_load_time_naming_the_key(
    project: Path, text: str, expected: str
) -> None:
    config = write_config(project, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message
    assert message.startswith(f"{config}: ")
    assert ": : " not in message  # every problem names its key
    assert "Value error" not in message


def test_an_unreadable_source_is_a_config_error_naming_the_file(project: Path) -> None:
    (project / "data" / "notes.parquet").write_text("id,churned\n1,0\n")
    path = write_config(project, BASE.replace("churn.parquet", "notes.parquet"))
    with pytest.raises(
        ConfigError, match=r"dataset.source: .*notes.parquet: not a readable Parquet"
    ):
        load_settings(path)


def test_a_missing_source_is_a_config_error(project: Path) -> None:
    path = write_config(project, BASE.replace("churn.parquet", "gone.parquet"))
    with pytest.raises(ConfigError, match=r"gone.parquet: no such file or directory"):
        load_settings(path)


def test_a_missing_config_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="driftloop init"):
        load_settings(tmp_path / "driftloop.yaml")


def test_a_misspelled_environment_variable_is_refused(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRIFTLOOP_TRAINNG__EPOCHS", "3")
    with pytest.raises(ConfigError, match="DRIFTLOOP_TRAINNG__EPOCHS: unknown setting"):
        load_settings(write_config(project, BASE))


def test_a_bad_environment_value_names_the_key(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRIFTLOOP_TRAINING__EPOCHS", "many")
    with pytest.raises(ConfigError, match=r"training\.epochs"):
        load_settings(write_config(project, BASE))


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("DRIFTLOOP_DATASET__SLICES", "contract", "dataset.slices takes a list, written as JSON"),
        ("DRIFTLOOP_GATE__FLOORS", "roc_auc=0.7", "gate.floors takes a mapping, written as JSON"),
    ],
)
def test_a_malformed_environment_value_names_the_variable_and_the_form_it_takes(
    project: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str, says: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(write_config(project, BASE))
    message = str(caught.value)
    assert message.startswith(f"environment: {name}={value!r}: {says}")
    assert "\n" not in message


def test_a_well_formed_list_in_the_environment_is_taken(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRIFTLOOP_DATASET__SLICES", '["contract"]')
    assert load_settings(write_config(project, BASE)).dataset.slices == ["contract"]


def test_without_a_config_file_the_stack_settings_come_from_the_environment(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_stack_settings(project / "absent.yaml") == (".driftloop", StackConfig())
    monkeypatch.setenv("DRIFTLOOP_HOME", str(project / "state"))
    monkeypatch.setenv("DRIFTLOOP_STACK__RAY_PORT", "7100")
    home, ports = load_stack_settings(project / "absent.yaml")
    assert home == str(project / "state")
    assert ports.ray_port == 7100
    assert ports.prefect_port == StackConfig().prefect_port
    monkeypatch.setenv("DRIFTLOOP_STACK__RAY_PORT", "many")
    with pytest.raises(ConfigError, match=r"^environment: stack\.ray_port: "):
        load_stack_settings(project / "absent.yaml")


def test_with_a_config_file_the_stack_settings_are_the_files(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(project, BASE + "home: elsewhere\nstack:\n  prefect_port: 4300\n")
    monkeypatch.setenv("DRIFTLOOP_STACK__DASHBOARD_PORT", "8300")
    home, ports = load_stack_settings(config)
    assert home == "elsewhere"
    assert (ports.prefect_port, ports.dashboard_port) == (4300, 8300)


# User expectations: checked by GX when the settings load -----------------------------------------

RULE = "{type: expect_column_values_to_be_between, kwargs: {column: tenure, min_value: 0}}"


def test_user_expectations_from_the_config_and_a_file_are_joined(project: Path) -> None:
    (project / "rules.yaml").write_text(
        "- type: expect_column_values_to_not_be_null\n  kwargs: {column: contract, mostly: 0.5}\n"
    )
    settings = load_settings(
        write_config(
            project,
            BASE + f"validation:\n  expectations: [{RULE}]\n  expectations_file: rules.yaml\n",
        )
    )
    names = [e["type"] for e in settings.validation.expectations]
    assert names == ["expect_column_values_to_be_between", "expect_column_values_to_not_be_null"]


@pytest.mark.parametrize(
    ("rules", "says"),
    [
        (
            "[{type: expect_column_values_to_be_betwen, kwargs: {column: tenure}}]",
            "validation.expectations[0].type: unknown expectation 'expect_column_values_to_be_"
            "betwen' (did you mean 'expect_column_values_to_be_between'",
        ),
        (
            "[{type: expect_column_values_to_be_between, kwargs: {colum: tenure}}]",
            "validation.expectations[0] (expect_column_values_to_be_between)",
        ),
    ],
)
def test_a_mistyped_user_expectation_fails_when_the_settings_load(
    project: Path, rules: str, says: str
) -> None:
    config = write_config(project, BASE + f"validation:\n  expectations: {rules}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert str(caught.value).startswith(f"{config}: ")
    assert says in str(caught.value)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "cannot read it"),
        ("- [unclosed", "not valid YAML or JSON"),
        ("type: expect_column_to_exist\n", "must hold a list of {type, kwargs, meta} entries"),
        ("- type: expect_column_to_exsit\n  kwargs: {column: tenure}\n", "did you mean"),
    ],
)
def test_a_bad_expectations_file_is_a_config_error_naming_it(
    project: Path, content: str | None, says: str
) -> None:
    if content is not None:
        (project / "rules.yaml").write_text(content)
    config = write_config(project, BASE + "validation:\n  expectations_file: rules.yaml\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert f"validation.expectations_file: {project / 'rules.yaml'}" in str(caught.value)
    assert says in str(caught.value)


def test_a_host_beyond_loopback_without_an_api_key_is_refused_in_one_line(project: Path) -> None:
    for host in ("0.0.0.0", "10.1.2.3", "'::'"):
        config = write_config(project, BASE + f"serving:\n  host: {host}\n")
        with pytest.raises(ConfigError) as caught:
            load_settings(config)
        assert "without a key: set serving.api_key" in str(caught.value)
        assert len(str(caught.value).splitlines()) == 1
    for host in ("127.0.0.1", "127.0.0.2", "'::1'", "localhost"):
        config = write_config(project, BASE + f"serving:\n  host: {host}\n")
        assert load_settings(config).serving.host == host.strip("'")
    for opened in ("  api_key: s3cret\n", "  allow_unauthenticated: true\n"):
        config = write_config(project, BASE + "serving:\n  host: 0.0.0.0\n" + opened)
        assert load_settings(config).serving.host == "0.0.0.0"
