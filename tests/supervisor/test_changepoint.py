"""Tests for gateway.supervisor.changepoint.

Residuals are in actuator units with Gaussian noise of SIGMA. Detectors are tuned as
drift/delta = 1 sigma and threshold = 8 sigma. For a step of 3 sigma the expected CUSUM delay is
threshold / (shift - drift) = 8/2 = 4 samples; the asserted bounds leave room for noise. The
no-alarm runs use the same tuning. Across 200 seeds x 10,000 noise samples it raised one false
alarm (seed 146), so the five seeds below are typical, not hand-picked; the false-alarm rate of
this tuning is low, not zero.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.supervisor.changepoint import (
    REASON_DECREASE,
    REASON_INCREASE,
    REASON_NOT_FINITE,
    ChangeDetector,
    Cusum,
    CusumConfig,
    PageHinkley,
    PageHinkleyConfig,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

SIGMA = 0.5
SEEDS = (0, 1, 2, 3, 4)
CHANGE_AT = 1000


def cusum() -> Cusum:
    return Cusum(CusumConfig(drift=1.0 * SIGMA, threshold=8.0 * SIGMA))


def page_hinkley() -> PageHinkley:
    return PageHinkley(PageHinkleyConfig(delta=1.0 * SIGMA, threshold=8.0 * SIGMA))


def page_hinkley_forgetting() -> PageHinkley:
    return PageHinkley(PageHinkleyConfig(delta=1.0 * SIGMA, threshold=8.0 * SIGMA, alpha=0.999))


# (factory, bound on delay after a 3-sigma step, bound on delay after the drift starts)
DETECTORS = [
    pytest.param(cusum, 15, 1000, id="cusum"),
    pytest.param(page_hinkley, 15, 1200, id="page-hinkley"),
    pytest.param(page_hinkley_forgetting, 15, 1200, id="page-hinkley-alpha"),
]


def noise(seed: int, n: int) -> npt.NDArray[np.float64]:
    return np.random.default_rng(seed).normal(0.0, SIGMA, n)


def first_alarm(detector: ChangeDetector, samples: Iterable[float]) -> int | None:
    for i, x in enumerate(samples):
        if detector.update(float(x)):
            return i
    return None


# --- must catch ----------------------------------------------------------------------------


@pytest.mark.parametrize(("make", "step_bound", "drift_bound"), DETECTORS)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("sign", "reason"), [(1.0, REASON_INCREASE), (-1.0, REASON_DECREASE)])
def test_catches_mean_shift(make, step_bound, drift_bound, seed, sign, reason):
    samples = noise(seed, CHANGE_AT + 200)
    samples[CHANGE_AT:] += sign * 3.0 * SIGMA
    detector = make()
    at = first_alarm(detector, samples)
    assert at is not None
    assert CHANGE_AT <= at <= CHANGE_AT + step_bound
    assert detector.last_reason == reason


@pytest.mark.parametrize(("make", "step_bound", "drift_bound"), DETECTORS)
@pytest.mark.parametrize("seed", SEEDS)
def test_catches_slow_linear_drift(make, step_bound, drift_bound, seed):
    # The AI's output creeps away from the fallback's by 0.002 sigma per sample: it takes
    # 500 samples to reach the 1-sigma slack, then the excess accumulates quadratically.
    samples = noise(seed, CHANGE_AT + 3000)
    samples[CHANGE_AT:] += 0.002 * SIGMA * np.arange(3000)
    detector = make()
    at = first_alarm(detector, samples)
    assert at is not None
    assert CHANGE_AT <= at <= CHANGE_AT + drift_bound
    assert detector.last_reason == REASON_INCREASE


def test_cusum_catches_offset_present_from_start_page_hinkley_does_not():
    # Documented difference: CUSUM measures against zero, Page-Hinkley against its own mean.
    samples = noise(0, 10_000) + 3.0 * SIGMA
    assert first_alarm(cusum(), samples) is not None
    assert first_alarm(page_hinkley(), samples) is None


# --- must not flag -------------------------------------------------------------------------


@pytest.mark.parametrize(("make", "step_bound", "drift_bound"), DETECTORS)
@pytest.mark.parametrize("seed", SEEDS)
def test_no_alarm_on_zero_mean_noise(make, step_bound, drift_bound, seed):
    detector = make()
    assert first_alarm(detector, noise(seed, 10_000)) is None
    assert not detector.alarm
    assert detector.last_reason is None
    assert detector.n_samples == 10_000


# --- non-finite input ----------------------------------------------------------------------


@pytest.mark.parametrize(("make", "step_bound", "drift_bound"), DETECTORS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("after", [0, 50])
def test_non_finite_residual_alarms_at_once(make, step_bound, drift_bound, bad, after):
    detector = make()
    assert first_alarm(detector, noise(0, after)) is None
    assert detector.update(bad) is True
    assert detector.alarm
    assert detector.last_reason == REASON_NOT_FINITE
    assert all(math.isfinite(v) for v in detector.evidence().values())


@pytest.mark.parametrize(("make", "step_bound", "drift_bound"), DETECTORS)
def test_extreme_finite_residuals_alarm_without_nan(make, step_bound, drift_bound):
    detector = make()
    detector.update(0.0)
    detector.update(1.7e308)
    detector.update(-1.7e308)
    assert detector.alarm
    assert not any(math.isnan(v) for v in detector.evidence().values())


# --- latching, reset, evidence -------------------------------------------------------------


@pytest.mark.parametrize(("make", "step_bound", "drift_bound"), DETECTORS)
def test_alarm_latches_with_frozen_evidence_until_reset(make, step_bound, drift_bound):
    detector = make()
    samples = noise(1, CHANGE_AT + 100)
    samples[CHANGE_AT:] += 3.0 * SIGMA
    at = first_alarm(detector, samples)
    assert at is not None
    evidence = detector.evidence()
    assert evidence["n_samples"] == at + 1
    assert evidence["g_pos"] > evidence["threshold"]
    for _ in range(100):
        assert detector.update(0.0) is True
    assert detector.evidence() == evidence  # describes the sample that raised the alarm
    detector.reset()
    assert not detector.alarm
    assert detector.last_reason is None
    assert detector.evidence()["n_samples"] == 0.0
    assert detector.evidence()["g_pos"] == detector.evidence()["g_neg"] == 0.0
    assert detector.update(0.0) is False


def test_cusum_golden_and_evidence():
    detector = Cusum(CusumConfig(drift=1.0, threshold=3.0))
    # g+ = max(0, 0 + 2 - 1) = 1;   g- = max(0, 0 - 2 - 1) = 0
    assert detector.update(2.0) is False
    assert (detector.g_pos, detector.g_neg) == (1.0, 0.0)
    # g+ = max(0, 1 + 2.5 - 1) = 2.5
    assert detector.update(2.5) is False
    # g+ = max(0, 2.5 - 3 - 1) = 0;  g- = max(0, 0 + 3 - 1) = 2
    assert detector.update(-3.0) is False
    assert (detector.g_pos, detector.g_neg) == (0.0, 2.0)
    # g- = 2 + 2.5 - 1 = 3.5 > 3
    assert detector.update(-2.5) is True
    assert detector.last_reason == REASON_DECREASE
    assert detector.evidence() == {
        "g_pos": 0.0,
        "g_neg": 3.5,
        "threshold": 3.0,
        "drift": 1.0,
        "n_samples": 4.0,
    }


def test_page_hinkley_golden_and_evidence():
    detector = PageHinkley(PageHinkleyConfig(delta=0.5, threshold=1.0, alpha=0.5))
    # w = 0.5*0 + 1 = 1; m = 4; x - m = 0 -> g+ = max(0, -0.5) = 0, g- = 0
    assert detector.update(4.0) is False
    assert detector.mean == 4.0
    # w = 0.5*1 + 1 = 1.5; m = 4 + (1 - 4)/1.5 = 2; x - m = -1
    # g+ = max(0, 0 - 1 - 0.5) = 0; g- = max(0, 0 + 1 - 0.5) = 0.5
    assert detector.update(1.0) is False
    assert detector.mean == pytest.approx(2.0, abs=1e-12)
    assert detector.g_pos == 0.0
    assert detector.g_neg == pytest.approx(0.5, abs=1e-12)
    # w = 0.75 + 1 = 1.75; m = 2 + (0 - 2)/1.75 = 0.857142...; x - m = -0.857142...
    # g- = 0.5 + 0.857142... - 0.5 = 0.857142... (not above 1)
    assert detector.update(0.0) is False
    assert detector.g_neg == pytest.approx(6.0 / 7.0, abs=1e-12)
    # w = 0.875 + 1 = 1.875; m = 6/7 + (-1 - 6/7)/1.875; g- = 6/7 + (m - x) - 0.5
    m = 6.0 / 7.0 + (-1.0 - 6.0 / 7.0) / 1.875
    assert detector.update(-1.0) is True
    assert detector.last_reason == REASON_DECREASE
    evidence = detector.evidence()
    assert evidence["g_neg"] == pytest.approx(6.0 / 7.0 + (m + 1.0) - 0.5, abs=1e-12)
    assert evidence["mean"] == pytest.approx(m, abs=1e-12)
    assert {k: evidence[k] for k in ("threshold", "delta", "alpha", "n_samples")} == {
        "threshold": 1.0,
        "delta": 0.5,
        "alpha": 0.5,
        "n_samples": 4.0,
    }


# --- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["drift", "threshold"])
@pytest.mark.parametrize("value", [0.0, -1.0, math.nan, math.inf, "1", True])
def test_cusum_config_rejects_bad_field(field, value):
    good = {"drift": 1.0, "threshold": 5.0}
    with pytest.raises(ValueError, match=f"`{field}`"):
        CusumConfig(**{**good, field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("delta", 0.0),
        ("delta", -0.1),
        ("delta", math.nan),
        ("threshold", 0.0),
        ("threshold", math.inf),
        ("alpha", 0.0),
        ("alpha", -0.5),
        ("alpha", 1.0001),
        ("alpha", math.nan),
        ("alpha", "0.9"),
    ],
)
def test_page_hinkley_config_rejects_bad_field(field, value):
    good = {"delta": 0.1, "threshold": 5.0, "alpha": 1.0}
    with pytest.raises(ValueError, match=f"`{field}`"):
        PageHinkleyConfig(**{**good, field: value})


# --- properties ----------------------------------------------------------------------------


@pytest.mark.parametrize("make", [cusum, page_hinkley, page_hinkley_forgetting])
@given(samples=st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=60))
def test_statistics_never_nan_and_bounded_until_alarm(make, samples):
    detector = make()
    for x in samples:
        alarm = detector.update(x)
        g_pos, g_neg = detector.g_pos, detector.g_neg
        assert not math.isnan(g_pos)
        assert not math.isnan(g_neg)
        assert g_pos >= 0.0
        assert g_neg >= 0.0
        if not alarm:
            threshold = detector.config.threshold
            assert g_pos <= threshold
            assert g_neg <= threshold
