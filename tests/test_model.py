"""The model: preprocessing fitted on train only, the MLP's outputs, the model directory."""

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from tasks.calibration import Calibration, calibrate, calibration_error, probabilities
from tasks.files import MODEL_JSON as MODEL
from tasks.files import PREPROCESSING, WEIGHTS
from tasks.model import (
    Z_LIMIT,
    ModelError,
    ModelSpec,
    Predictor,
    Preprocessor,
    TabularMLP,
    load_model,
    save_model,
)
from tasks.settings import Features, TrainingConfig

FEATURES = Features(numeric=["tenure", "charges"], categorical=["contract", "has_partner"])


def make_table(rows: int = 200, *, seed: int = 0, target: str = "binary") -> pa.Table:
    rng = np.random.default_rng(seed)
    charges = rng.normal(50, 10, rows)
    labels = {
        "binary": (charges > 50).astype(np.int64),
        "multiclass": np.array(["low", "mid", "high"])[np.digitize(charges, [45, 55])],
        "regression": 2.0 * charges + rng.normal(0, 1, rows),
    }
    return pa.table(
        {
            "tenure": rng.integers(1, 72, rows),
            "charges": pa.array(charges, mask=rng.random(rows) < 0.1),
            "contract": rng.choice(["monthly", "yearly", "two-year"], rows),
            "has_partner": rng.random(rows) < 0.5,
            "y": labels[target],
        }
    )


def fit(table: pa.Table, *, task: str = "classification") -> Preprocessor:
    return Preprocessor.fit(table, features=FEATURES, target="y", task=task)  # type: ignore[arg-type]


def build(pre: Preprocessor, **training: object) -> tuple[TabularMLP, ModelSpec]:
    spec = ModelSpec.build(pre, TrainingConfig(**training))
    torch.manual_seed(0)
    return TabularMLP(spec), spec


# Preprocessing -----------------------------------------------------------------------------------


def test_statistics_come_from_the_training_split_only() -> None:
    train = make_table(seed=1)
    validation = make_table(seed=2).set_column(
        1, "charges", pa.array(np.full(200, 1e6))
    )  # wildly different, and must not matter
    pre = fit(train)
    charges = train["charges"].drop_null().to_numpy()
    assert pre.means[1] == pytest.approx(charges.mean())
    assert pre.stds[1] == pytest.approx(charges.std())
    assert pre.vocabularies[0] == ["monthly", "two-year", "yearly"]
    encoded = pre.transform(validation)
    assert encoded.numeric[:, 1].min() >= 100  # far outside, because scaled by train's stats
    assert fit(train) == pre  # deterministic


def test_a_standardised_value_is_clipped_so_the_network_stays_finite() -> None:
    pre = fit(make_table(seed=1))
    extreme = make_table(seed=2).slice(0, 4)
    values = [3.0e38, -3.0e38, 1e300, 50.0]
    extreme = extreme.set_column(1, "charges", pa.array(values))
    z = pre.transform(extreme).numeric[:, 1]
    assert list(z[:3]) == [Z_LIMIT, -Z_LIMIT, Z_LIMIT]
    assert z[3] == pytest.approx((50.0 - pre.means[1]) / pre.stds[1], rel=1e-5)


def test_unknown_categories_and_missing_values_map_to_reserved_slots() -> None:
    pre = fit(make_table())
    odd = pa.table(
        {
            "tenure": pa.array([None, 10], pa.int64()),
            "charges": [float("nan"), float("inf")],
            "contract": ["weekly", None],
            "has_partner": pa.array([None, True], pa.bool_()),
            "y": [0, 1],
        }
    )
    encoded = pre.transform(odd)
    assert encoded.numeric[:, :2].tolist()[0] == [0.0, 0.0]  # missing -> 0 ...
    assert encoded.numeric[:, 2:].tolist() == [[1.0, 1.0], [0.0, 1.0]]  # ... plus a flag
    assert encoded.categorical[:, 0].tolist() == [0, 0]  # unseen and null -> 0
    assert encoded.categorical[:, 1].tolist() == [0, 2]  # booleans are categories too
    assert np.isfinite(encoded.numeric).all()


def test_targets_encode_as_class_indices_or_standardised_values() -> None:
    pre = fit(make_table(target="multiclass"))
    assert pre.kind == "multiclass"
    assert pre.classes == ["high", "low", "mid"]
    assert set(pre.encode_target(make_table(target="multiclass")).tolist()) == {0, 1, 2}
    reg = fit(make_table(target="regression"), task="regression")
    y = reg.encode_target(make_table(target="regression"))
    assert reg.kind == "regression"
    assert abs(float(y.mean())) < 1e-6
    assert float(y.std()) == pytest.approx(1.0, abs=1e-4)


def test_a_target_class_unseen_in_training_is_refused_with_its_name() -> None:
    pre = fit(make_table())
    bad = make_table().set_column(4, "y", pa.array(np.full(200, 7, dtype=np.int64)))
    with pytest.raises(ModelError, match=r"unseen in training: \[7\]"):
        pre.encode_target(bad)


def test_a_training_split_with_one_class_or_an_all_null_target_is_refused() -> None:
    one_class = make_table().set_column(4, "y", pa.array(np.ones(200, dtype=np.int64)))
    with pytest.raises(ModelError, match=r"target 'y' has 1 class\(es\) in training data"):
        fit(one_class)
    unlabelled = make_table().set_column(4, "y", pa.nulls(200, pa.int64()))
    with pytest.raises(ModelError, match="target 'y'"):
        fit(unlabelled)


def test_a_missing_feature_column_is_named() -> None:
    pre = fit(make_table())
    with pytest.raises(ModelError, match=r"missing column.*charges"):
        pre.transform(make_table().drop_columns(["charges"]))


def test_preprocessing_round_trips_through_json() -> None:
    pre = fit(make_table(target="multiclass"))
    again = Preprocessor.from_json(pre.to_json())
    assert again == pre
    np.testing.assert_array_equal(
        again.transform(make_table()).numeric, pre.transform(make_table()).numeric
    )


# Network -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "task", "shape"),
    [
        ("binary", "classification", (200, 2)),
        ("multiclass", "classification", (200, 3)),
        ("regression", "regression", (200,)),
    ],
)
def test_predictions_have_the_shape_of_the_task(
    tmp_path: Path, target: str, task: str, shape: tuple[int, ...]
) -> None:
    table = make_table(target=target)
    pre = fit(table, task=task)
    model, spec = build(pre)
    predictor = load_model(save_model(tmp_path / "m", model=model, spec=spec, preprocessor=pre))
    out = predictor.predict(table)
    assert out.shape == shape
    if task == "classification":
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-6)
        assert predictor.classes == pre.classes
    else:
        assert predictor.classes is None


def test_embeddings_are_capped_by_cardinality() -> None:
    pre = fit(make_table())
    _, spec = build(pre, embedding_dim=8, hidden_layers=[16])
    assert spec.cardinalities == [4, 3]  # 3 contracts + unknown, 2 booleans + unknown
    assert spec.embedding_dims == [4, 3]
    assert spec.numeric_inputs == 4  # 2 values + 2 missing flags


# Model directory ---------------------------------------------------------------------------------


def test_save_then_load_gives_identical_predictions(tmp_path: Path) -> None:
    table = make_table()
    pre = fit(table)
    model, spec = build(pre)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))  # not the initial weights
    directory = save_model(tmp_path / "model", model=model, spec=spec, preprocessor=pre)
    first = load_model(directory).predict(table)
    second = load_model(directory).predict(table)
    np.testing.assert_array_equal(first, second)
    from_uri = load_model(directory.as_uri()).predict(table)  # a bucket version reads the same way
    np.testing.assert_array_equal(first, from_uri)
    model.eval()
    encoded = pre.transform(table)
    with torch.no_grad():
        logits = model(torch.from_numpy(encoded.numeric), torch.from_numpy(encoded.categorical))
    np.testing.assert_allclose(first[:, 1], torch.sigmoid(logits[:, 0]).numpy(), rtol=1e-6)


def test_the_model_directory_holds_safetensors_and_json_only(tmp_path: Path) -> None:
    pre = fit(make_table())
    model, spec = build(pre)
    directory = save_model(tmp_path / "model", model=model, spec=spec, preprocessor=pre)
    assert sorted(p.name for p in directory.iterdir()) == sorted([WEIGHTS, PREPROCESSING, MODEL])
    header_size = int.from_bytes((directory / WEIGHTS).read_bytes()[:8], "little")
    header = json.loads((directory / WEIGHTS).read_bytes()[8 : 8 + header_size])
    assert header["__metadata__"]["format"] == "driftloop.model/1"  # a safetensors header
    meta = json.loads((directory / MODEL).read_text())
    assert meta["kind"] == "binary"
    assert meta["features"] == {
        "numeric": ["tenure", "charges"],
        "categorical": FEATURES.categorical,
    }
    assert meta["classes"] == [0, 1]


def test_loading_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pre = fit(make_table())
    model, spec = build(pre)
    directory = save_model(tmp_path / "model", model=model, spec=spec, preprocessor=pre)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle was used")

    monkeypatch.setattr("pickle.load", refuse)
    monkeypatch.setattr("pickle.loads", refuse)
    monkeypatch.setattr("torch.load", refuse)
    assert load_model(directory).predict(make_table()).shape == (200, 2)


def test_a_real_pickle_in_place_of_the_weights_is_refused_in_one_line_and_never_run(
    tmp_path: Path,
) -> None:
    pre = fit(make_table())
    model, spec = build(pre)
    directory = save_model(tmp_path / "model", model=model, spec=spec, preprocessor=pre)
    ran = tmp_path / "the-pickle-ran"

    class Payload:  # what a hostile pickle does on load: run code
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.mkdir, (str(ran),))

    torch.save({"state": model.state_dict(), "payload": Payload()}, directory / WEIGHTS)
    with pytest.raises(ModelError) as refused:
        load_model(directory)
    message = str(refused.value)
    assert "\n" not in message
    assert WEIGHTS in message
    assert "not a safetensors file" in message
    assert "never unpickles" in message
    assert not ran.exists()  # the payload never ran


def test_saving_over_a_model_replaces_it_whole_and_leaves_no_temporary_folders(
    tmp_path: Path,
) -> None:
    table = make_table()
    pre = fit(table)
    first, spec = build(pre)
    save_model(tmp_path / "model", model=first, spec=spec, preprocessor=pre)
    second = TabularMLP(spec)
    save_model(tmp_path / "model", model=second, spec=spec, preprocessor=pre)
    second.eval()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    encoded = pre.transform(table)
    with torch.no_grad():
        logits = second(torch.from_numpy(encoded.numeric), torch.from_numpy(encoded.categorical))
    loaded = load_model(tmp_path / "model").predict(table)
    np.testing.assert_allclose(loaded[:, 1], torch.sigmoid(logits[:, 0]).numpy(), rtol=1e-6)


def test_a_folder_that_is_not_a_model_directory_is_refused_clearly(tmp_path: Path) -> None:
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="not a model directory"):
        load_model(tmp_path)


# Calibration -------------------------------------------------------------------------------------


def over_confident(
    rows: int, *, seed: int, scale: float
) -> tuple[pa.Table, TabularMLP, ModelSpec, Preprocessor]:
    """Rows where P(y=1) = sigmoid(2 z) (z: standardised charges), and a linear model whose
    logit is `scale` times that: calibrated at scale 1, over-confident above."""
    rng = np.random.default_rng(seed)
    charges = rng.normal(50, 10, rows)
    z = (charges - 50) / 10
    y = (rng.random(rows) < 1 / (1 + np.exp(-2 * z))).astype(np.int64)
    table = pa.table(
        {
            "tenure": rng.integers(1, 72, rows),
            "charges": charges,
            "contract": rng.choice(["monthly", "yearly", "two-year"], rows),
            "has_partner": rng.random(rows) < 0.5,
            "y": y,
        }
    )
    pre = fit(table)
    model, spec = build(pre, hidden_layers=[])  # one linear layer over inputs and embeddings
    with torch.no_grad():
        layer = model.mlp[-1]
        assert isinstance(layer, torch.nn.Linear)
        layer.weight.zero_()
        layer.bias.zero_()
        # input 1 is charges standardised by the training mean and std: close to z
        layer.weight[0, 1] = 2.0 * scale * pre.stds[1] / 10
        layer.bias[0] = 2.0 * scale * (pre.means[1] - 50) / 10
    return table, model, spec, pre


def test_temperature_scaling_lowers_the_ece_on_rows_it_was_not_fitted_on(tmp_path: Path) -> None:
    table, model, spec, pre = over_confident(6000, seed=0, scale=4.0)
    fitting, unseen = table.slice(0, 3000), table.slice(3000)
    raw = Predictor(model=model, spec=spec, preprocessor=pre)
    y_fit, y_unseen = pre.encode_target(fitting), pre.encode_target(unseen)
    found = calibrate(raw.logits(fitting), y_fit, kind="binary", bins=15)
    assert found.temperature == pytest.approx(4.0, rel=0.15)  # it undoes the 4x over-confidence
    assert found.ece_after < found.ece_before
    assert found.log_loss_after < found.log_loss_before

    directory = save_model(tmp_path / "m", model=model, spec=spec, preprocessor=pre,
                           calibration=found)  # fmt: skip
    loaded = load_model(directory)
    assert loaded.temperature == pytest.approx(found.temperature)
    calibrated, uncalibrated = loaded.predict(unseen), loaded.predict(unseen, calibrated=False)
    before = calibration_error(y_unseen, uncalibrated, bins=15)
    after = calibration_error(y_unseen, calibrated, bins=15)
    assert after < 0.5 * before  # on rows the temperature never saw
    assert after < 0.05  # the gate's default bound; noise alone is about 0.03 here
    # predict applies the temperature; `uncalibrated` is the same network without it
    expected = probabilities(loaded.logits(unseen), kind="binary", temperature=found.temperature)
    np.testing.assert_allclose(calibrated, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(loaded.uncalibrated.predict(unseen), uncalibrated)
    np.testing.assert_array_equal(calibrated.argmax(axis=1), uncalibrated.argmax(axis=1))
    assert json.loads((directory / MODEL).read_text())["calibration"]["temperature"] == (
        pytest.approx(found.temperature)
    )


def test_a_model_directory_without_a_temperature_loads_uncalibrated(tmp_path: Path) -> None:
    table, model, spec, pre = over_confident(500, seed=1, scale=4.0)
    directory = save_model(tmp_path / "m", model=model, spec=spec, preprocessor=pre)
    meta = json.loads((directory / MODEL).read_text())
    assert "calibration" not in meta  # what every model saved before temperatures looks like
    loaded = load_model(directory)
    assert loaded.temperature == 1.0
    np.testing.assert_array_equal(loaded.predict(table), loaded.predict(table, calibrated=False))


def test_a_bad_temperature_in_model_json_is_refused_in_one_line(tmp_path: Path) -> None:
    _, model, spec, pre = over_confident(200, seed=2, scale=1.0)
    directory = save_model(tmp_path / "m", model=model, spec=spec, preprocessor=pre)
    meta = json.loads((directory / MODEL).read_text())
    meta["calibration"] = {"temperature": -1.0}
    (directory / MODEL).write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="positive temperature"):
        load_model(directory)


def test_regression_has_no_temperature() -> None:
    pre = fit(make_table(target="regression"), task="regression")
    model, spec = build(pre)
    calibration = Calibration(temperature=2.0, rows=10, log_loss_before=1.0, log_loss_after=1.0,
                              ece_before=0.1, ece_after=0.1, bins=2)  # fmt: skip
    with pytest.raises(ModelError, match="classifier"):
        save_model(Path("unused"), model=model, spec=spec, preprocessor=pre,
                   calibration=calibration)  # fmt: skip
    assert (
        Predictor(model=model, spec=spec, preprocessor=pre, calibration=calibration).temperature
        == 1.0
    )
