"""Reward-model statistics against hand-computed values."""

import math

import pytest

from rlhfkit.evaluate.metrics import (accuracy_by_strength, expected_calibration_error, length_bias_audit,
                                      pair_accuracy, pearson, reliability_bins)


def test_pair_accuracy_counts_ties_half():
    assert pair_accuracy([1, 2, 0, 5], [0, 3, 0, 1]) == pytest.approx((1 + 0 + 0.5 + 1) / 4)


def test_calibration_by_hand():
    # d = r_c - r_r; p = sigmoid(d). Two pairs at d = +ln 4 (p = 0.8, right) and one at
    # d = -ln 4 (p = 0.2: confidence 0.8 in the rejected one, wrong). Bin [0.75, 1] holds all
    # three: confidence 0.8, accuracy 2/3 -> ECE = |2/3 - 0.8| = 2/15.
    rc, rr = [math.log(4), math.log(4), 0.0], [0.0, 0.0, math.log(4)]
    assert expected_calibration_error(rc, rr, n_bins=2) == pytest.approx(2 / 15)
    bins = reliability_bins(rc, rr, n_bins=2)
    assert bins[0]["count"] == 0 and bins[1]["count"] == 3
    assert bins[1]["confidence"] == pytest.approx(0.8) and bins[1]["accuracy"] == pytest.approx(2 / 3)


def test_length_bias_audit_by_hand():
    # pairs: (chosen longer, right), (chosen longer, right), (chosen shorter, wrong), (equal, ignored)
    audit = length_bias_audit([2, 3, 0, 1], [1, 1, 1, 0], [10, 8, 3, 5], [5, 4, 6, 5])
    assert audit["acc_chosen_longer"] == 1.0 and audit["acc_chosen_shorter"] == 0.0
    assert audit["length_gap"] == 1.0 and audit["n_chosen_longer"] == 2 and audit["n_chosen_shorter"] == 1
    assert audit["length_corr"] == pytest.approx(pearson([2, 3, 0, 1, 1, 1, 1, 0], [10, 8, 3, 5, 5, 4, 6, 5]))
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0) and math.isnan(pearson([1, 1], [1, 2]))


def test_accuracy_by_strength():
    out = accuracy_by_strength([1, 0, 2, 3], [0, 1, 1, 4], [1, 1, 3, 3])
    assert out == {"1": {"count": 2, "accuracy": 0.5}, "3": {"count": 2, "accuracy": 0.5}}


def test_gao_fit_recovers_a_known_curve_and_its_peak():
    import numpy as np

    from rlhfkit.evaluate.metrics import gao_rl_fit

    alpha, beta = 1.2, 0.6
    d = np.array([0.5, 1.0, 2.0, 3.0, 5.0, 8.0])
    gain = d * (alpha - beta * np.log(d))
    fit = gao_rl_fit(d ** 2, gain)
    assert fit["alpha"] == pytest.approx(alpha, abs=1e-9) and fit["beta"] == pytest.approx(beta, abs=1e-9)
    assert fit["r2"] == pytest.approx(1.0)
    # dR/dd = alpha - beta log d - beta = 0  =>  d* = e^(alpha/beta - 1) = e^1
    assert fit["d_peak"] == pytest.approx(np.e) and fit["kl_peak"] == pytest.approx(np.e ** 2)
    assert fit["gold_gain_peak"] == pytest.approx(np.e * (1.2 - 0.6))
    with pytest.raises(ValueError):
        gao_rl_fit([0.0, 1.0], [0.0, 0.1])
