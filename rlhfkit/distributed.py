"""Cross-process arithmetic: the one place numbers are summed or averaged over processes.

Every stage reduces its metrics and normalisers through these functions, one all-reduce per call
for a whole dict of numbers (a PPO step needs three, not one per metric). With one process they
are the identity and touch no collective, so single-process runs never initialise one.
"""

from __future__ import annotations

import torch


def sum_across(acc, values: dict[str, float]) -> dict[str, float]:
    """Per-process numbers -> their sums over all processes, in one all-reduce (float64, so
    token counts of large runs stay exact)."""
    values = {k: float(v) for k, v in values.items()}
    if acc.num_processes == 1 or not values:
        return values
    keys = sorted(values)  # every process must pack the same order
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=acc.device)
    return dict(zip(keys, acc.reduce(t, reduction="sum").tolist()))


def mean_across(acc, values: dict[str, float]) -> dict[str, float]:
    """Per-process means -> their mean over processes. Exact as a global mean only when every
    process averaged the same number of items (PPO's episodes are; use ``sum_across`` and divide
    by the global count otherwise)."""
    return {k: v / acc.num_processes for k, v in sum_across(acc, values).items()}


def global_token_normalizer(acc, mask: torch.Tensor) -> torch.Tensor:
    """What each process divides its masked token *sum* by so that, after DDP averages the
    gradients over N processes, the update is that of the token mean over all processes' tokens:
    ``(tokens on all processes) / N``. With one process it is this mask's token count (at least 1).
    A tensor on the device (not a float) because it sits inside every micro-batch's loss."""
    n = mask.detach().float().sum()
    if acc.num_processes > 1:
        n = acc.reduce(n.clone(), reduction="sum") / acc.num_processes
    return n.clamp(min=1.0)
