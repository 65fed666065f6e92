"""Reward-model statistics as pure numpy functions (tested against hand-computed values).

Used by `rlhf reward` at eval time and by reports. Inputs are plain arrays of rewards, so the
same code audits any scorer (ours, an ensemble mean, a third-party reward model).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def pair_accuracy(r_chosen: Sequence[float], r_rejected: Sequence[float]) -> float:
    """Share of pairs with r_chosen > r_rejected; an exact tie counts half (no preference)."""
    d = np.asarray(r_chosen, float) - np.asarray(r_rejected, float)
    return float(np.mean((d > 0) + 0.5 * (d == 0))) if d.size else math.nan


def reliability_bins(r_chosen: Sequence[float], r_rejected: Sequence[float],
                     n_bins: int = 10) -> list[dict]:
    """Reliability-diagram data for the Bradley-Terry probability p = sigmoid(r_c - r_r).

    The labels always say "chosen won", so calibration is read in its symmetric form: the model's
    confidence is max(p, 1-p) in [0.5, 1] and it is right when its favourite is the chosen one.
    Bins split [0.5, 1] evenly; each reports count, mean confidence and accuracy.
    """
    d = np.asarray(r_chosen, float) - np.asarray(r_rejected, float)
    p = 1.0 / (1.0 + np.exp(-d))
    conf = np.maximum(p, 1.0 - p)
    correct = (p > 0.5) + 0.5 * (p == 0.5)
    edges = np.linspace(0.5, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        m = idx == b
        bins.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": int(m.sum()),
                     "confidence": float(conf[m].mean()) if m.any() else None,
                     "accuracy": float(correct[m].mean()) if m.any() else None})
    return bins


def expected_calibration_error(r_chosen: Sequence[float], r_rejected: Sequence[float],
                               n_bins: int = 10) -> float:
    """ECE = sum over bins of (n_b / N) * |accuracy_b - confidence_b| (Guo et al. 2017)."""
    bins = reliability_bins(r_chosen, r_rejected, n_bins)
    n = sum(b["count"] for b in bins)
    if n == 0:
        return math.nan
    return float(sum(b["count"] / n * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]))


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; NaN when either side is constant."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def length_bias_audit(r_chosen: Sequence[float], r_rejected: Sequence[float],
                      len_chosen: Sequence[int], len_rejected: Sequence[int]) -> dict:
    """Does the reward follow length rather than quality?

    - ``length_corr``: correlation of reward with response length over all responses;
    - ``acc_chosen_longer`` / ``acc_chosen_shorter``: accuracy on pairs where the preferred
      response is the longer / the shorter one (equal lengths are left out). A length-biased
      reward model is much better on the first than on the second;
    - ``length_gap`` = acc_chosen_longer - acc_chosen_shorter, the one-number summary.
    """
    rc, rr = np.asarray(r_chosen, float), np.asarray(r_rejected, float)
    lc, lr = np.asarray(len_chosen, float), np.asarray(len_rejected, float)
    longer, shorter = lc > lr, lc < lr
    acc_l = pair_accuracy(rc[longer], rr[longer]) if longer.any() else math.nan
    acc_s = pair_accuracy(rc[shorter], rr[shorter]) if shorter.any() else math.nan
    return {"length_corr": pearson(np.concatenate([rc, rr]), np.concatenate([lc, lr])),
            "acc_chosen_longer": acc_l, "acc_chosen_shorter": acc_s,
            "n_chosen_longer": int(longer.sum()), "n_chosen_shorter": int(shorter.sum()),
            "length_gap": acc_l - acc_s}


def accuracy_by_strength(r_chosen: Sequence[float], r_rejected: Sequence[float],
                         strength: Sequence[float]) -> dict[str, dict]:
    """Accuracy per preference-strength value (e.g. the 1-4 margin a labeler gave)."""
    rc, rr, s = np.asarray(r_chosen, float), np.asarray(r_rejected, float), np.asarray(strength, float)
    return {f"{v:g}": {"count": int((s == v).sum()), "accuracy": pair_accuracy(rc[s == v], rr[s == v])}
            for v in sorted(set(s.tolist()))}


def gao_rl_fit(kl: Sequence[float], gold_gain: Sequence[float]) -> dict:
    """Fit Gao et al. (2022)'s RL over-optimisation form R(d) = d (alpha - beta log d), d = sqrt(KL).

    `gold_gain` is the gold reward minus the starting policy's (R(0) = 0). The form is linear in
    (alpha, beta): R = alpha d - beta d log d, so ordinary least squares on points with d > 0 gives
    them exactly. With beta > 0 gold peaks at d* = exp(alpha / beta - 1) (dR/dd = 0) and falls after:
    the point past which optimising the proxy harder hurts the true objective.
    """
    d = np.sqrt(np.clip(np.asarray(kl, dtype=float), 0.0, None))
    r = np.asarray(gold_gain, dtype=float)
    keep = d > 0
    if keep.sum() < 2:
        raise ValueError("gao_rl_fit needs at least two points with KL > 0")
    d, r = d[keep], r[keep]
    design = np.stack([d, -d * np.log(d)], axis=1)  # (N, 2): columns for alpha and beta
    (alpha, beta), *_ = np.linalg.lstsq(design, r, rcond=None)
    pred = design @ np.array([alpha, beta])
    ss_res, ss_tot = float(((r - pred) ** 2).sum()), float(((r - r.mean()) ** 2).sum())
    d_peak = float(np.exp(alpha / beta - 1.0)) if beta > 0 else None
    return {"alpha": float(alpha), "beta": float(beta), "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0,
            "d_peak": d_peak, "kl_peak": None if d_peak is None else d_peak ** 2,
            "gold_gain_peak": None if d_peak is None else float(d_peak * (alpha - beta * np.log(d_peak)))}


def health_verdict(policy: dict, reference: dict, alarms_fired: dict | None = None, *,
                   collapse_ratio: float = 0.5) -> dict:
    """A one-line verdict on a policy's samples next to the reference's (item 34): numbers that rose
    are not a success when every prompt gets the same answer, or when the proxy rose while gold fell.

    ``policy`` / ``reference``: per-policy metrics of ``evaluate_policies`` (distinct_2,
    top_completion_share, length_tokens, and win_rate / rm_win_rate vs the reference when known).
    Verdicts: "collapsed" when distinct-2 is below ``collapse_ratio`` of the reference's or one
    completion is over half of the samples (and more than in the reference's); "reward hacked:
    proxy up, gold down" when the reward model prefers the policy (RM win rate > 0.55) while gold
    does not (gold win rate < 0.45); else "healthy". ``alarms_fired`` (kind -> first step, from the
    training run's summary) are reported with it; a collapse alarm alone makes it "collapsed".
    """
    reasons = []
    d2, d2_ref = policy.get("distinct_2"), reference.get("distinct_2")
    diversity = d2 / d2_ref if d2 is not None and d2_ref else None
    share, share_ref = policy.get("top_completion_share") or 0.0, reference.get("top_completion_share") or 0.0
    if diversity is not None and diversity < collapse_ratio:
        reasons.append(f"distinct-2 at {diversity:.0%} of the reference's")
    if share > 0.5 and share > share_ref:
        reasons.append(f"one completion is {share:.0%} of the samples")
    alarms = dict(alarms_fired or {})
    if "collapse" in alarms:
        reasons.append(f"collapse alarm at step {alarms['collapse']}")
    verdict = "collapsed" if reasons else "healthy"
    win, rm_win = policy.get("win_rate"), policy.get("rm_win_rate")
    if verdict == "healthy" and win is not None and rm_win is not None and rm_win > 0.55 and win < 0.45:
        verdict = "reward hacked: proxy up, gold down"
        reasons.append(f"RM win rate {rm_win:.0%}, gold win rate {win:.0%}")
    length, length_ref = policy.get("length_tokens"), reference.get("length_tokens")
    return {"verdict": verdict, "reasons": reasons, "alarms_fired": alarms,
            "distinct_2_vs_reference": diversity,
            "length_vs_reference": length / length_ref if length is not None and length_ref else None}
