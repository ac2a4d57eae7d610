"""Temperature scaling and expected calibration error on toys where the answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from galmerge.scores.calibration import expected_calibration_error, fit_temperature, nll


def _calibrated_toy(n: int = 4000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose softmax is the true class probability (labels drawn from it)."""
    g = torch.Generator().manual_seed(seed)
    margin = torch.randn(n, generator=g, dtype=torch.float64) * 2.0
    p = torch.sigmoid(margin)
    labels = (torch.rand(n, generator=g, dtype=torch.float64) < p).long()
    logits = torch.stack([torch.zeros(n, dtype=torch.float64), margin], dim=1)
    return logits, labels


def test_overconfident_logits_get_their_temperature_back_and_lower_nll() -> None:
    logits, labels = _calibrated_toy()
    overconfident = logits * 4.0
    t = fit_temperature(overconfident, labels)
    assert 3.3 < t < 4.8, t
    assert nll(overconfident, labels, t) < nll(overconfident, labels, 1.0) - 0.1
    p_before = torch.softmax(overconfident, 1)[:, 1].numpy()
    p_after = torch.softmax(overconfident / t, 1)[:, 1].numpy()
    assert expected_calibration_error(p_after, labels.numpy()) < 0.5 * expected_calibration_error(
        p_before, labels.numpy()
    )


def test_underconfident_logits_get_a_temperature_below_one() -> None:
    logits, labels = _calibrated_toy(seed=1)
    t = fit_temperature(logits / 3.0, labels)
    assert 0.25 < t < 0.42, t


def test_unlabelled_rows_are_ignored_and_no_labels_means_no_scaling() -> None:
    logits, labels = _calibrated_toy(n=500, seed=2)
    hidden = labels.clone()
    hidden[:250] = -1
    t_half = fit_temperature(logits * 2.0, hidden)
    assert t_half == fit_temperature((logits * 2.0)[250:], labels[250:])
    assert fit_temperature(logits, torch.full_like(labels, -1)) == 1.0
    assert math.isnan(nll(logits, torch.full_like(labels, -1)))


def test_ece_known_values() -> None:
    # always 80% sure of "merger" and right 80% of the time: perfectly calibrated
    labels = np.array([1] * 8 + [0] * 2)
    assert expected_calibration_error(np.full(10, 0.8), labels) < 1e-12
    # fully sure of the predicted class and right half of the time: ECE 0.5
    assert math.isclose(
        expected_calibration_error(np.array([1.0, 1.0, 0.0, 0.0]), np.array([1, 0, 0, 1])), 0.5
    )
    assert math.isnan(expected_calibration_error(np.array([0.3]), np.array([-1])))


def test_uninformative_logits_get_a_bounded_temperature() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(400, 2, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 2, (400,), generator=g)
    assert 1.0 < fit_temperature(logits, labels) <= 100.0


def test_weighted_temperature_is_the_fit_on_the_rows_that_carry_weight() -> None:
    logits, labels = _calibrated_toy(n=3000, seed=2)
    # first half overconfident by 4, second half by 1.5: zero weights must drop a half
    scaled = logits.clone()
    scaled[:1500] *= 4.0
    scaled[1500:] *= 1.5
    w = np.r_[np.ones(1500), np.zeros(1500)]
    t_first = fit_temperature(scaled[:1500], labels[:1500])
    assert fit_temperature(scaled, labels, weights=w) == pytest.approx(t_first, rel=1e-3)
    assert fit_temperature(scaled, labels, weights=1 - w) == pytest.approx(
        fit_temperature(scaled[1500:], labels[1500:]), rel=1e-3)
    assert nll(scaled, labels, 1.0, w) == pytest.approx(nll(scaled[:1500], labels[:1500]))
    assert fit_temperature(scaled, labels, weights=np.zeros(3000)) == 1.0
