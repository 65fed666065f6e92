"""SFT loss (item 31 of docs/implementation-details.md: token-sum / step token count)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token negative log-likelihood summed over the labelled positions.

    logits: (B, T, V) from a causal LM; labels: (B, T) token ids with ``IGNORE_INDEX`` where no
    loss is taken (prompt, padding). Position t predicts labels[t + 1], so the last logit and the
    first label are dropped. Returns (sum of NLL over labelled tokens, number of labelled tokens)
    so the caller can normalise by the token count of the *whole* accumulated, all-process batch:
    averaging per micro-batch instead would weight tokens of short micro-batches more and break
    "gradient accumulation == bigger batch".
    """
    shift_logits = logits[:, :-1, :].float()  # (B, T-1, V); fp32 for a stable log-softmax
    shift_labels = labels[:, 1:]  # (B, T-1)
    nll = F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                          ignore_index=IGNORE_INDEX, reduction="sum")
    n_tokens = (shift_labels != IGNORE_INDEX).sum()
    return nll, n_tokens


def sft_loss(logits: torch.Tensor, labels: torch.Tensor,
             num_tokens: torch.Tensor | float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Masked SFT loss: NLL summed over labelled tokens divided by ``num_tokens``.

    ``num_tokens`` defaults to this batch's labelled-token count (a plain token mean); training
    loops pass the count over the whole optimizer step (all micro-batches, all processes).
    """
    nll, n = token_nll(logits, labels)
    denom = n if num_tokens is None else num_tokens
    denom = torch.as_tensor(denom, dtype=nll.dtype, device=nll.device).clamp(min=1)
    loss = nll / denom
    return loss, {"nll_sum": nll.item(), "tokens": int(n)}
