"""What a PPO / RLOO / GRPO run watches every step, and the alarms that act on it (RLHF-DETAILS
item 19): diversity, the proxy - gold gap (reward hacking, Gao et al. 2022) and the KL budget;
plus the one cross-process reduction of the step's metrics."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def distinct_2(responses: list[list[int]]) -> float:
    """Distinct response bigrams / all response bigrams in the batch (1: no repeats; near 0: collapse)."""
    grams = [tuple(r[i:i + 2]) for r in responses for i in range(len(r) - 1)]
    return len(set(grams)) / max(len(grams), 1)


def gap_widening(gaps: list[float], n: int) -> bool:
    """True when the last ``n`` steps each widened the proxy - gold gap (n = 0: never)."""
    return bool(n) and len(gaps) > n and all(gaps[-i] > gaps[-i - 1] for i in range(1, n + 1))


def mean_across(acc, local: dict[str, float]) -> dict[str, float]:
    """Per-process metric means -> their mean over processes, in one all-reduce for the whole dict
    (every process holds the same number of episodes, so the mean of means is the global mean)."""
    if acc.num_processes == 1 or not local:
        return {k: float(v) for k, v in local.items()}
    keys = sorted(local)
    t = torch.tensor([float(local[k]) for k in keys], dtype=torch.float64, device=acc.device)
    t = acc.reduce(t, reduction="mean")
    return dict(zip(keys, t.tolist()))


def check_alarms(cfg, m: dict, gaps: list[float], step: int) -> dict | None:
    """The alarm raised at ``step`` (dict with its ``action``: warn / stop), or None. Marks the
    step's metrics with ``alarm_kl`` / ``alarm_gap``; the later alarm wins when both fire."""
    alarm = None
    if cfg.max_kl is not None and m["seq_kl"] > cfg.max_kl:
        alarm = {"step": step, "seq_kl": m["seq_kl"], "max_kl": cfg.max_kl, "action": cfg.kl_alarm}
        log.warning("step %d: sequence KL %.4f above max_kl %.4f (%s)", step, m["seq_kl"], cfg.max_kl, cfg.kl_alarm)
        m["alarm_kl"] = 1
    n = cfg.gap_alarm_steps
    if gap_widening(gaps, n):
        # Over-optimisation signature (Gao et al. 2022): the proxy pulls away from the gold
        # reward step after step. Needs a gold function (synthetic world).
        alarm = {"step": step, "proxy_gold_gap": gaps[-1], "widening_steps": n, "action": cfg.gap_alarm}
        log.warning("step %d: proxy-gold gap widened %d steps in a row (now %.4f) (%s)", step, n, gaps[-1],
                    cfg.gap_alarm)
        m["alarm_gap"] = 1
    return alarm
