"""Rewards to advantages: per-token rewards, GAE, masked whitening, RLOO and GRPO baselines.

Pure tensor functions (RLHF-DETAILS items 10, 13, 14, 21). Per-token tensors are (B, T) with a
0/1 ``mask`` that is 1 on response tokens (through the first EOS) and 0 on prompt and padding;
in practice T is the ``T-1`` of :func:`rlhfkit.logprobs.token_logprobs`. Padding never enters a
result: masked positions of every output are 0, and the values stored there in the inputs do
not change any valid position.

Group layout for RLOO / GRPO: the k samples of one prompt are contiguous, row ``i * k + j`` is
sample j of prompt i (what ``generate_rollout(..., num_samples=k)`` produces).
"""

from __future__ import annotations

import torch

from rlhfkit.logprobs import masked_mean


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) mask -> (B,) column of the last 1 in each row (-1 for an all-zero row)."""
    t = mask.shape[1]
    cols = torch.arange(t, device=mask.device).expand_as(mask)  # (B, T)
    return torch.where(mask.bool(), cols, torch.full_like(cols, -1)).max(dim=1).values


def per_token_rewards(score: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor,
                      beta: float) -> torch.Tensor:
    """Item 13: ``-beta * KL_t`` on every response token, plus the sequence score on the last
    valid token (the EOS, or the last sampled token of a truncated response).

    score (B,) (after any no-EOS penalty); kl (B, T) per-token estimate (k1 classically);
    mask (B, T). Returns (B, T), 0 outside the mask. A row with no response token gets nothing.
    """
    m = mask.to(torch.float32)
    rewards = -beta * kl.float() * m  # (B, T)
    last = last_token_index(mask)  # (B,)
    rows = torch.nonzero(last >= 0).squeeze(-1)  # rows that have a response token
    rewards[rows, last[rows]] += score.float()[rows]
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over a masked response.

    ``delta_t = r_t + gamma * V_{t+1} * m_{t+1} - V_t`` and
    ``A_t = delta_t + gamma * lam * m_{t+1} * A_{t+1}``: the episode ends at the last valid
    token, so the value and advantage of the position after it are taken as 0 whatever the
    tensors hold there. ``returns = A + V`` is computed here, before any whitening (item 14).

    rewards, values, mask: (B, T). Returns ``(advantages, returns)``, both (B, T), 0 off the mask.
    """
    r = rewards.float()
    v = values.float()
    m = mask.to(torch.float32)
    b, t = r.shape
    adv = torch.zeros_like(r)  # (B, T)
    last_gae = torch.zeros(b, dtype=r.dtype, device=r.device)  # (B,) A_{t+1}
    for i in reversed(range(t)):
        if i + 1 < t:
            next_v, next_m = v[:, i + 1], m[:, i + 1]
        else:
            next_v = next_m = torch.zeros_like(last_gae)
        delta = r[:, i] + gamma * next_v * next_m - v[:, i]  # (B,)
        last_gae = delta + gamma * lam * next_m * last_gae
        adv[:, i] = last_gae
    adv = adv * m
    returns = (adv + v) * m
    return adv, returns


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over the positions where mask is 1; Bessel-corrected by default (as TRL)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        var = var * n / (n - 1).clamp(min=1)
    return var


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8,
           sum_across=None) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` with mean and (unbiased) variance over valid tokens only,
    so padding neither shifts nor scales the result. ``shift_mean=False`` adds the mean back
    (only rescales; used for rewards in some recipes). Returns x's shape, 0 off the mask.

    ``sum_across``: a function summing a tensor over processes (e.g. ``accelerator.reduce(t,
    "sum")``); then the statistics are those of the valid tokens of *all* processes, so N
    processes whiten exactly like one process holding the whole batch.
    """
    x = x.float()
    m = mask.to(x.dtype)
    if sum_across is None:
        mean, var = masked_mean(x, m), masked_var(x, m)
    else:
        n, s1, s2 = sum_across(torch.stack([m.sum(), (x * m).sum(), (x * x * m).sum()]))  # one all-reduce
        mean = s1 / n.clamp(min=1)
        var = (s2 / n.clamp(min=1) - mean * mean).clamp(min=0) * n / (n - 1).clamp(min=1)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * m


def _groups(rewards: torch.Tensor, k: int) -> torch.Tensor:
    if rewards.dim() != 1 or rewards.numel() % k:
        raise ValueError(f"expected (n_prompts * k,) rewards with k={k}, got shape {tuple(rewards.shape)}")
    return rewards.float().view(-1, k)  # (n_prompts, k): row i holds prompt i's k samples


def rloo_advantages(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """RLOO (Kool et al. 2019; Ahmadian et al. 2024): ``A_i = r_i - mean of the other k-1``.

    rewards (n_prompts * k,) sequence rewards in the group layout of the module docstring.
    Returns the same shape. Since sum_j r_j = k * mean, the baseline is (k * mean - r_i)/(k - 1).
    """
    if k < 2:
        raise ValueError("RLOO needs k >= 2 samples per prompt")
    g = _groups(rewards, k)  # (P, k)
    baseline = (g.sum(dim=1, keepdim=True) - g) / (k - 1)  # (P, k) leave-one-out means
    return (g - baseline).reshape(-1)


def grpo_advantages(rewards: torch.Tensor, k: int, eps: float = 1e-4, scale: bool = True) -> torch.Tensor:
    """GRPO (Shao et al. 2024, DeepSeekMath): ``(r - group mean) / (group std + eps)``.

    The std is the unbiased sample std of the k rewards (``torch.std``, as TRL). A group whose
    rewards are all equal gets advantage 0. ``scale=False`` skips the division (Dr. GRPO, Liu et
    al. 2025, which argues it biases towards low-variance prompts). Shape as :func:`rloo_advantages`.
    """
    if k < 2:
        raise ValueError("GRPO needs k >= 2 samples per prompt")
    g = _groups(rewards, k)  # (P, k)
    centred = g - g.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (g.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


def group_advantages(estimator: str, score: torch.Tensor, seq_kl: torch.Tensor, beta: float, k: int, *,
                     scale: bool = True) -> torch.Tensor:
    """Sequence advantages of the critic-free estimators with the KL penalty in the reward.

    score (n_prompts * k,) task scores; seq_kl (same shape) summed k1 per sample; beta 0 when
    the KL is in the loss instead. RLOO is linear, so ``rloo(score - beta * kl)`` is exact. GRPO
    standardises the *task score* within the group first and then subtracts
    ``beta * (kl - group mean kl)``: standardising ``score - beta * kl`` as a whole would divide
    the KL term by the group std, so in a group whose task scores tie the advantage is
    ``-standardised(kl)`` at full strength whatever beta is (the KL then steers the policy
    alone). Here advantages scale with beta in such a group. ``scale=False``: Dr. GRPO.
    """
    if estimator == "rloo":
        return rloo_advantages(score.float() - beta * seq_kl.float(), k)
    if estimator == "grpo":
        adv = grpo_advantages(score, k, scale=scale)
        return adv - beta * grpo_advantages(seq_kl, k, scale=False) if beta else adv
    raise ValueError(f"group advantages are for 'rloo' / 'grpo', got {estimator!r}")
