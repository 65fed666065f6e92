"""What a PPO / RLOO / GRPO run watches every step, and the alarms that act on it (RLHF-DETAILS
items 19 and 34): diversity (batch distinct-2, the share of the most common completion, bigram
similarity between answers to different prompts, token entropy) against the start of training
(mode collapse), the proxy - gold gap (reward hacking, Gao et al. 2022) and the KL budget.
Metrics reach here already averaged over processes (:func:`rlhfkit.distributed.mean_across`)."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def distinct_2(responses: list[list[int]]) -> float:
    """Distinct response bigrams / all response bigrams in the batch (1: no repeats; near 0: collapse)."""
    grams = [tuple(r[i:i + 2]) for r in responses for i in range(len(r) - 1)]
    return len(set(grams)) / max(len(grams), 1)


def gap_widening(gaps: list[float], n: int) -> bool:
    """True when the last ``n`` steps each widened the proxy - gold gap (n = 0: never)."""
    return bool(n) and len(gaps) > n and all(gaps[-i] > gaps[-i - 1] for i in range(1, n + 1))


def check_alarms(cfg, m: dict, gaps: list[float], step: int,
                 collapse: "CollapseWatch | None" = None) -> dict | None:
    """The alarm raised at ``step`` (dict with its ``kind`` and ``action``: warn / stop), or None.
    Marks the step's metrics with ``alarm_kl`` / ``alarm_gap`` / ``alarm_collapse`` and logs
    ``collapse_ratio``; when several fire, a stopping one wins, else the last."""
    alarms = []
    if collapse is not None:
        m["collapse_ratio"], reasons = collapse.check(m)
        if reasons and cfg.collapse_alarm != "off":
            alarms.append({"kind": "collapse", "step": step, "reasons": reasons,
                           "action": cfg.collapse_alarm})
            if not collapse.warned:  # once: later steps carry alarm_collapse in the metrics
                collapse.warned = True
                log.warning("step %d: mode collapse: %s (%s)", step, "; ".join(reasons), cfg.collapse_alarm)
            m["alarm_collapse"] = 1
    alarm = None
    if cfg.max_kl is not None and m["seq_kl"] > cfg.max_kl:
        alarm = {"kind": "kl", "step": step, "seq_kl": m["seq_kl"], "max_kl": cfg.max_kl,
                 "action": cfg.kl_alarm}
        log.warning("step %d: sequence KL %.4f above max_kl %.4f (%s)", step, m["seq_kl"], cfg.max_kl,
                    cfg.kl_alarm)
        m["alarm_kl"] = 1
    n = cfg.gap_alarm_steps
    if gap_widening(gaps, n):
        # Over-optimisation signature (Gao et al. 2022): the proxy pulls away from the gold
        # reward step after step. Needs `gold` (synthetic, a function of yours, or a held-out RM).
        alarm = {"kind": "gap", "step": step, "proxy_gold_gap": gaps[-1], "widening_steps": n,
                 "action": cfg.gap_alarm}
        log.warning("step %d: proxy-gold gap widened %d steps in a row (now %.4f) (%s)", step, n, gaps[-1],
                    cfg.gap_alarm)
        m["alarm_gap"] = 1
    alarms += [alarm] if alarm else []
    stopping = [a for a in alarms if a["action"] == "stop"]
    return (stopping or alarms or [None])[-1]


def top_completion_share(responses: list[list[int]]) -> float:
    """Share of the batch taken by its most common response (token-identical): 1/B when all differ,
    1.0 when the policy answers everything the same way."""
    if not responses:
        return 0.0
    counts: dict[tuple, int] = {}
    for r in responses:
        counts[tuple(r)] = counts.get(tuple(r), 0) + 1
    return max(counts.values()) / len(responses)


def cross_prompt_similarity(responses: list[list[int]], k: int = 1) -> float:
    """Mean Jaccard similarity of the bigram sets of responses to *different* prompts (rows in the
    group layout: row i * k + j is sample j of prompt i). Near 0 for answers that address their
    prompt; it rises when every prompt gets the same generic answer (mode collapse)."""
    sets = [set(zip(r, r[1:])) for r in responses]
    total = n = 0
    for a in range(len(sets)):
        for b in range(a + 1, len(sets)):
            if a // k == b // k:
                continue
            union = sets[a] | sets[b]
            total += len(sets[a] & sets[b]) / len(union) if union else 1.0
            n += 1
    return total / n if n else 0.0


class CollapseWatch:
    """Mode-collapse alarm relative to the start of training (item 34).

    The first watched step sets the baseline of batch distinct-2, token entropy and cross-prompt
    *dissimilarity* (1 - :func:`cross_prompt_similarity`). The alarm fires when any of them falls
    below ``threshold`` times its baseline, or when the most common completion takes more than
    ``1 - threshold`` of the batch (and more than it did at the start). Dissimilarity catches the
    collapse that keeps completions token-distinct (one template with the item swapped in: "the
    plot was great" for every film) and so slips past the top-completion share.
    The baseline is part of the checkpoint state, so a resumed run judges against the same start.
    """

    def __init__(self, threshold: float, baseline: dict | None = None):
        self.threshold, self.baseline, self.warned = threshold, baseline, False

    def check(self, m: dict) -> tuple[float, list[str]]:
        """(collapse ratio: min of distinct-2 and entropy relative to the start, reasons it fires)."""
        now = {"distinct_2": m["distinct_2"], "entropy": m.get("entropy", 0.0),
               "top_completion_share": m["top_completion_share"]}
        if "cross_prompt_similarity" in m:
            now["dissimilarity"] = 1.0 - m["cross_prompt_similarity"]
        if self.baseline is None:
            self.baseline = now
            return 1.0, []
        # A baseline written before dissimilarity was watched (an older checkpoint) lacks the key.
        ratios = {k: now[k] / self.baseline[k] for k in ("distinct_2", "entropy", "dissimilarity")
                  if k in now and self.baseline.get(k, 0) > 0}
        reasons = [f"{k} at {r:.0%} of its start" for k, r in ratios.items() if r < self.threshold]
        share = now["top_completion_share"]
        if share > 1 - self.threshold and share > self.baseline["top_completion_share"]:
            reasons.append(f"one completion is {share:.0%} of the batch")
        return min(ratios.values(), default=1.0), reasons
