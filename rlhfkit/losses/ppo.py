"""PPO losses: the clipped policy surrogate, the clipped value loss, and token entropy."""

from __future__ import annotations

import torch

from rlhfkit.logprobs import masked_mean  # torch-only module: the one shared masked mean

# ---------------------------------------------------------------------------------------------
# PPO losses (RLHF-DETAILS items 12, 15, 19; Schulman et al. 2017; "The N+ Implementation
# Details of RLHF with PPO", Huang et al. 2024)
#
# Per-token tensors are (B, T) with a 0/1 response ``mask`` (tokens after the first EOS and the
# prompt are 0, so they contribute nothing to the loss or to any metric). Losses are token means
# over the mask; ``num_tokens`` replaces the denominator with the token count of the whole
# optimizer step (all micro-batches and processes), as in ``sft_loss``.
# ---------------------------------------------------------------------------------------------


def _token_mean(x: torch.Tensor, mask: torch.Tensor, num_tokens: torch.Tensor | float | None) -> torch.Tensor:
    if num_tokens is None:
        return masked_mean(x, mask)
    denom = torch.as_tensor(num_tokens, dtype=x.dtype, device=x.device).clamp(min=1)
    return (x * mask.to(x.dtype)).sum() / denom


def ppo_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, clip: float = 0.2,
                    num_tokens: torch.Tensor | float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate: ``mean_t max(-A_t rho_t, -A_t clip(rho_t, 1-clip, 1+clip))``.

    ``rho_t = exp(logp_t - old_logp_t)``; logp (with grad) and old_logp (the rollout's) are both
    temperature-scaled (item 12), so on the first minibatch of the first epoch rho = 1 and the
    loss is ``-mean(A)``. Shapes: all (B, T).

    Metrics (masked token means): ``clipfrac`` = share of tokens where the clipped term is the
    larger one, i.e. whose gradient clipping removes (the TRL / OpenAI definition; 0 at rho = 1);
    ``approx_kl`` = ``0.5 * mean((logp - old_logp)^2)`` (k2 between the old and current policy);
    ``ratio`` = mean rho.
    """
    m = mask.to(torch.float32)
    # Zero the log-ratio off the mask before exp: a padded position holding -inf or a large
    # log-prob would give inf * 0 = nan in the masked mean.
    log_ratio = torch.where(m.bool(), logp.float() - old_logp.float(), 0.0)  # (B, T)
    ratio = torch.exp(log_ratio)
    adv = torch.where(m.bool(), advantages.float(), 0.0)
    unclipped = -adv * ratio  # (B, T)
    clipped = -adv * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = _token_mean(torch.maximum(unclipped, clipped), m, num_tokens)
    with torch.no_grad():
        metrics = {
            "clipfrac": masked_mean((clipped > unclipped).float(), m).item(),
            "approx_kl": (0.5 * masked_mean(log_ratio ** 2, m)).item(),
            "ratio": masked_mean(ratio, m).item(),
        }
    return loss, metrics


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                   mask: torch.Tensor, clip: float = 0.2,
                   num_tokens: torch.Tensor | float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped value loss (item 15): ``0.5 * mean_t max((V - R)^2, (V_clip - R)^2)`` with
    ``V_clip = old_V + clip(V - old_V, -clip, clip)``, so one update cannot move a value
    estimate further than ``clip`` from the rollout's. Shapes: all (B, T).

    Metrics: ``vf_clipfrac`` = share of tokens where the clipped term is the larger one;
    ``value`` = mean V; ``value_error`` = mean (V - R)^2.
    """
    m = mask.to(torch.float32)
    v, old, ret = values.float(), old_values.float(), returns.float()
    v_clipped = old + torch.clamp(v - old, -clip, clip)  # (B, T)
    sq = (v - ret) ** 2
    sq_clipped = (v_clipped - ret) ** 2
    loss = 0.5 * _token_mean(torch.maximum(sq, sq_clipped), m, num_tokens)
    with torch.no_grad():
        metrics = {"vf_clipfrac": masked_mean((sq_clipped > sq).float(), m).item(),
                   "value": masked_mean(v, m).item(), "value_error": masked_mean(sq, m).item()}
    return loss, metrics


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(B, T, V) logits -> (B, T) entropy of the temperature-scaled softmax, in fp32:
    ``H = logsumexp(z) - sum_v softmax(z)_v z_v`` (one softmax, no log of small probabilities)."""
    z = logits.float()
    if temperature != 1.0:
        z = z / temperature
    p = torch.softmax(z, dim=-1)
    return torch.logsumexp(z, dim=-1) - (p * z).sum(dim=-1)
