"""Temperature scaling and judging calibration on a sample: numpy only, no model, no Ray."""

import numpy as np
import pytest

from tasks.calibration import (
    bins_for,
    calibrate,
    calibration_error,
    ece_interval,
    equal_mass_bins,
    fit_temperature,
    log_loss,
    probabilities,
)


def multiclass_logits(rows: int, *, seed: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(true logits); returned logits are `scale` times the true ones."""
    rng = np.random.default_rng(seed)
    true = rng.normal(0, 1.5, (rows, 4))
    p = np.exp(true) / np.exp(true).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(4, p=row) for row in p])
    return scale * true, y


@pytest.mark.parametrize("scale", [0.5, 1.0, 3.0])
def test_the_fitted_temperature_undoes_a_known_scaling_of_multiclass_logits(scale: float) -> None:
    logits, y = multiclass_logits(4000, seed=0, scale=scale)
    t = fit_temperature(logits, y, kind="multiclass")
    assert t == pytest.approx(scale, rel=0.1)
    assert log_loss(logits, y, kind="multiclass", temperature=t) <= log_loss(
        logits, y, kind="multiclass"
    )
    probs = probabilities(logits, kind="multiclass", temperature=t)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    # the argmax (so the accuracy) never moves
    np.testing.assert_array_equal(probs.argmax(axis=1), logits.argmax(axis=1))


def test_a_separable_handful_of_rows_does_not_push_the_temperature_to_its_bound() -> None:
    logits = np.array([3.0, -3.0, 2.5, -2.0, 4.0])  # binary, every row right
    y = np.array([1, 0, 1, 0, 1])
    t = fit_temperature(logits, y, kind="binary")
    assert 0.1 < t < 1.0  # sharper, but the prior on log T holds it off e^-3
    assert fit_temperature(logits, y, kind="binary", prior_sd=None) == pytest.approx(
        np.exp(-3.0), rel=0.01
    )


def test_calibrate_reports_before_and_after_on_its_rows() -> None:
    logits, y = multiclass_logits(2000, seed=1, scale=3.0)
    found = calibrate(logits, y, kind="multiclass", bins=15)
    assert found.rows == 2000
    assert found.bins == bins_for(2000, max_bins=15)
    assert found.log_loss_after < found.log_loss_before
    assert found.ece_after < found.ece_before
    assert found.to_json()["temperature"] == found.temperature
    with pytest.raises(ValueError, match="regression"):
        fit_temperature(logits[:, 0], y, kind="regression")


def test_fewer_rows_get_fewer_equal_mass_bins() -> None:
    assert bins_for(30, max_bins=15) == 2
    assert bins_for(300, max_bins=15) == 6
    assert bins_for(30_000, max_bins=15) == 15
    confidence = np.array([0.1, 0.1, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    index = equal_mass_bins(confidence, 4)
    assert len(set(index[:3])) == 1  # ties never straddle an edge
    assert np.bincount(index).tolist() == [3, 1, 2, 2]


def test_the_interval_spans_the_noise_of_few_rows_and_excludes_a_clear_miscalibration() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 60)
    y = (rng.random(60) < p).astype(np.int64)  # calibrated by construction
    probs = np.stack([1 - p, p], axis=1)
    fair = ece_interval(y, probs, max_bins=15, resamples=300, confidence=0.95, seed=0)
    assert fair.bins == 2
    assert fair.ece > 0  # noise alone
    assert fair.low < 0.05  # 60 rows cannot tell it from a 0.05 error: the rule must not fail
    assert fair.low <= fair.debiased <= fair.high
    assert fair.debiased < fair.ece  # the noise of few rows a bin, taken out
    assert fair.ece == pytest.approx(calibration_error(y, probs, bins=2))
    # the same rows with probabilities pushed to the extremes: clearly over-confident
    sharp = np.where(p > 0.5, 0.99, 0.01)
    off = ece_interval(y, np.stack([1 - sharp, sharp], axis=1), max_bins=15, resamples=300,
                       confidence=0.95, seed=0)  # fmt: skip
    assert off.low > 0.05


def test_a_calibrated_model_on_600_rows_is_not_called_miscalibrated_by_its_noise() -> None:
    """The ECE is biased upward on few rows a bin (a calibrated model scores ~0.05 on 600 rows):
    the interval takes the bias out, so a gate at 0.05 rejects a calibrated model no more often
    than its confidence allows, and still rejects one that is 0.12 off."""
    rng = np.random.default_rng(7)
    rejected = {"calibrated": 0, "off": 0}
    for trial in range(60):
        p = rng.beta(1.2, 1.2, size=600)
        truth = {"calibrated": p, "off": np.clip(p - 0.12 * np.sign(p - 0.5), 0, 1)}
        probs = np.stack([1 - p, p], axis=1)
        for kind, chance in truth.items():
            y = (rng.random(600) < chance).astype(np.int64)
            found = ece_interval(y, probs, max_bins=15, resamples=200, confidence=0.95, seed=trial)
            rejected[kind] += found.low > 0.05
    assert rejected["calibrated"] <= 1  # a 2.5% one-sided level (percentiles: 8 of 60)
    assert rejected["off"] >= 50
