"""Admin analytics by hand: Bradley-Terry leaderboard, bootstrap intervals, position bias,
per-annotator statistics (rlhfkit/feedback/analytics.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlhfkit.feedback import analytics as an

_ids = iter(range(1, 10_000))


def pair(task, annotator, m0, m1, choice, *, position=None, strength=None, seconds=None):
    """A judgement dict shaped like FeedbackStore.judgements() rows (canonical order m0, m1)."""
    r0, r1 = task * 10, task * 10 + 1
    winner = {"A": r0, "B": r1}.get(choice)
    # like the store: pairs carry a ranking too ([[winner], [loser]], or one group for a tie)
    ranking = [[r0, r1]] if winner is None else [[winner], [r1 if winner == r0 else r0]]
    return {"judgement_id": next(_ids), "task_id": task, "annotator": annotator, "annotator_id": 0,
            "prompt": "p", "response_ids": [r0, r1], "texts": ["x", "y"], "model_ids": [m0, m1],
            "kind": "pair", "choice": choice, "winner_id": winner, "ranking": ranking, "strength": strength,
            "rationale": None, "displayed_order": [r0, r1], "position_chosen": position,
            "seconds": seconds, "guideline_version": 1, "calibration": False, "created_at": ""}


def games_for(wins: dict[tuple[str, str], tuple[int, int]]):
    """{(a, b): (wins of a, wins of b)} -> pair judgements, one task per game."""
    out, task = [], 0
    for (a, b), (wa, wb) in wins.items():
        for _ in range(wa):
            task += 1
            out.append(pair(task, "ann", a, b, "A"))
        for _ in range(wb):
            task += 1
            out.append(pair(task, "ann", a, b, "B"))
    return out


# Strengths 4 : 2 : 1 give P(a>b) = 2/3, P(b>c) = 2/3, P(a>c) = 4/5; these win counts match those
# probabilities exactly, so the (unpenalised) maximum-likelihood fit is theta = log(4, 2, 1)
# centred: (log 2, 0, -log 2).
SATURATED = {("a", "b"): (2, 1), ("b", "c"): (2, 1), ("a", "c"): (4, 1)}


def test_bradley_terry_three_models_known_solution():
    games = an.outcomes(games_for(SATURATED))
    theta = an.fit_bradley_terry(games, ["a", "b", "c"], ridge=1e-9)
    np.testing.assert_allclose(theta, [math.log(2), 0.0, -math.log(2)], atol=1e-6)
    # the default tiny ridge moves it only slightly, towards 0
    theta_r = an.fit_bradley_terry(games, ["a", "b", "c"])
    np.testing.assert_allclose(theta_r, theta, atol=1e-3)
    assert abs(theta_r[0]) < abs(theta[0])


def test_leaderboard_order_elo_and_win_rates():
    rows = an.leaderboard(games_for(SATURATED), n_boot=50, seed=0)
    assert [r.model for r in rows] == ["a", "b", "c"]
    a, b, c = rows
    assert a.games == 8 and b.games == 6 and c.games == 8
    assert a.win_rate == pytest.approx(6 / 8) and b.win_rate == pytest.approx(3 / 6)
    assert c.win_rate == pytest.approx(2 / 8)
    # Elo: 400 points per factor 10 of odds -> a is log10(2) * 400 = 120.4 above b
    assert a.elo - b.elo == pytest.approx(400 * math.log10(2), abs=0.1)


def test_undefeated_model_stays_finite_and_ties_count_half():
    js = games_for({("a", "b"): (5, 0)})
    theta = an.fit_bradley_terry(an.outcomes(js), ["a", "b"])
    assert np.isfinite(theta).all() and theta[0] > 3 and theta[0] == pytest.approx(-theta[1])
    # only ties between two models: equal strengths; with ties dropped nothing is left
    tied = [pair(t, "ann", "a", "b", kind) for t, kind in enumerate(["tie_good", "tie_bad"] * 3)]
    rows = an.leaderboard(tied, n_boot=10)
    assert [r.theta for r in rows] == pytest.approx([0.0, 0.0], abs=1e-9)
    assert all(r.win_rate == 0.5 for r in rows)
    assert an.leaderboard(tied, ties="drop") == []
    # same model on both sides says nothing about models
    assert an.outcomes([pair(1, "ann", "a", "a", "A")]) == []


def test_ranking_judgement_expands_to_pairs_with_ties():
    j = pair(1, "ann", "m1", "m2", None)
    j.update(kind="ranking", response_ids=[11, 12, 13], model_ids=["m1", "m2", "m3"],
             ranking=[[12], [11, 13]])
    games = sorted(an.outcomes([j]))
    # m2 beats m1 and m3; m1 and m3 tie
    assert games == [(1, "m1", "m2", 0.0), (1, "m1", "m3", 0.5), (1, "m2", "m3", 1.0)]


def test_bootstrap_interval_contains_estimate_is_seeded_and_narrows_with_data():
    small = games_for({("a", "b"): (6, 3), ("b", "c"): (5, 4), ("a", "c"): (7, 2)})
    rows1 = an.leaderboard(small, n_boot=200, seed=3)
    rows2 = an.leaderboard(small, n_boot=200, seed=3)
    assert rows1 == rows2
    for r in rows1:
        assert r.ci_low <= r.theta <= r.ci_high and r.ci_low < r.ci_high
    big = games_for({("a", "b"): (60, 30), ("b", "c"): (50, 40), ("a", "c"): (70, 20)})
    rows_big = {r.model: r for r in an.leaderboard(big, n_boot=200, seed=3)}
    for r in rows1:  # ten times the tasks: about sqrt(10) narrower
        assert rows_big[r.model].ci_high - rows_big[r.model].ci_low < 0.6 * (r.ci_high - r.ci_low)


def test_binomial_p_values_by_hand():
    # n=10, k=8: P(X<=2) = (1 + 10 + 45) / 1024; two-sided doubles it
    assert an.binomial_two_sided_p(8, 10) == pytest.approx(112 / 1024)
    assert an.binomial_two_sided_p(2, 10) == pytest.approx(112 / 1024)
    # n=20, k=15: P(X<=5) = (1+20+190+1140+4845+15504) / 2^20
    assert an.binomial_two_sided_p(15, 20) == pytest.approx(2 * 21700 / 2 ** 20)
    assert an.binomial_two_sided_p(5, 10) == 1.0
    assert an.binomial_two_sided_p(0, 0) == 1.0
    assert an.binomial_two_sided_p(5000, 10000) == 1.0
    assert an.binomial_two_sided_p(0, 2000) < 1e-300 or an.binomial_two_sided_p(0, 2000) == 0.0
    with pytest.raises(ValueError):
        an.binomial_two_sided_p(3, 2)


def test_position_bias_counts_only_decided_pairs():
    js = [pair(t, "ann", "a", "b", "A", position=0) for t in range(7)]
    js += [pair(10, "ann", "a", "b", "B", position=0), pair(11, "ann", "a", "b", "A", position=1),
           pair(12, "ann", "a", "b", "B", position=1)]
    # ties and rankings are not a left/right choice; they must not count
    js += [pair(20, "ann", "a", "b", "tie_good"), pair(21, "ann", "a", "b", "tie_bad")]
    rk = pair(22, "ann", "a", "b", None, position=0)
    rk.update(kind="ranking", ranking=[[220], [221]])
    js.append(rk)
    pb = an.position_bias(js)
    assert (pb.n, pb.left) == (10, 8)
    assert pb.left_rate == 0.8
    assert pb.p_value == pytest.approx(112 / 1024)
    empty = an.position_bias([])
    assert empty.n == 0 and math.isnan(empty.left_rate) and empty.p_value == 1.0


def test_annotator_stats_by_hand():
    js = [
        # task 1: ann1 and ann2 agree (A); task 2: ann1 A, ann2 B; task 3 only ann1 (a tie)
        pair(1, "ann1", "a", "b", "A", position=0, seconds=4.0, strength=3),
        pair(1, "ann2", "a", "b", "A", position=1, seconds=10.0, strength=3),
        pair(2, "ann1", "a", "b", "A", position=0, seconds=6.0, strength=2),
        pair(2, "ann2", "a", "b", "B", position=0, seconds=None, strength=1),
        pair(3, "ann1", "a", "b", "tie_good", seconds=20.0),
    ]
    s1, s2 = an.annotator_stats(js)
    assert s1.annotator == "ann1" and s1.count == 3
    assert s1.median_seconds == 6.0          # median of 4, 6, 20
    assert s1.tie_rate == pytest.approx(1 / 3)
    assert s1.left_rate == 1.0               # both decided choices were on the left
    assert s1.agreement == 0.5 and s1.agreement_items == 2   # agrees on task 1, not task 2
    assert s2.count == 2 and s2.median_seconds == 10.0 and s2.tie_rate == 0.0
    assert s2.left_rate == 0.5 and s2.agreement == 0.5


def test_agreement_summary_reports_values_and_reasons():
    js = [pair(1, "ann1", "a", "b", "A", strength=3), pair(1, "ann2", "a", "b", "A", strength=3),
          pair(2, "ann1", "a", "b", "A", strength=2), pair(2, "ann2", "a", "b", "B", strength=1)]
    stats = {s.name.split(" (")[0].split(",")[0]: s for s in an.agreement_summary(js, min_shared=2)}
    assert stats["raw pairwise agreement"].value == 0.5
    # Cohen: p_o = 1/2; ann1 always A, ann2 half A -> p_e = 1 * 1/2; kappa = 0
    assert stats["Cohen's kappa"].value == pytest.approx(0.0)
    # a statistic the data cannot support is reported with the reason, never raised
    uplift = stats["majority-vote uplift"]
    assert uplift.value is None and "3" in uplift.note
