"""Log-probability mechanics shared by DPO, PPO/RLOO/GRPO and evaluation (written once).

Conventions: position t of the logits predicts token t+1, so per-token log-probs have shape
(B, T-1) and are aligned with ``input_ids[:, 1:]``; masks are sliced the same way. Logits are
divided by the sampling temperature *before* the log-softmax in every log-prob computation
(rollout, reference, training), or the policy ratio on the first PPO minibatch is not 1
(RLHF-DETAILS item 12).

RL sequences are a prompt block then a response block, and only the response's log-probs are
ever used: :func:`logits_window` asks the model for logits from the last prompt column on only
(transformers' ``logits_to_keep``), so the LM head (vocab x hidden per position: a quarter of a
tiny model's FLOPs) and the log-softmax skip the prompt; :func:`window_logprobs` puts the result
back into the (B, T-1) layout with zeros over the prompt. Rollout, reference and training
forwards all use it, so they stay the same computation (first PPO ratio 1).
"""

from __future__ import annotations

import inspect
from functools import lru_cache

import torch
import torch.nn.functional as F

from rlhfkit.data.padding_free import is_padding_free, num_examples, packed_inputs, segment_sum


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(B, T, V) logits, (B, T) ids -> (B, T-1) log p(input_ids[:, t+1] | prefix), in fp32."""
    logits = logits[:, :-1, :].float()
    if temperature != 1.0:
        logits = logits / temperature
    logp = F.log_softmax(logits, dim=-1)  # (B, T-1, V)
    return torch.gather(logp, 2, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def sequence_logprobs(model, batch: dict[str, torch.Tensor], *, temperature: float = 1.0,
                      mask_key: str = "response_mask") -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-prob of the masked (response) tokens of each row, and their count.

    ``batch`` holds ``input_ids``, ``attention_mask``, ``position_ids`` and a (B, T) mask of
    the tokens to score. Returns ``(logps (B,), n_tokens (B,))``. Positions come from the
    attention mask, so left- and right-padded batches give the same numbers. A padding-free
    batch (:mod:`rlhfkit.data.padding_free`) gives the same (N,) numbers, in its examples' order.
    """
    if is_padding_free(batch):
        return _packed_sequence_logprobs(model, batch, temperature, mask_key)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"], use_cache=False)
    lp = token_logprobs(out.logits, batch["input_ids"], temperature)  # (B, T-1)
    mask = batch[mask_key][:, 1:].to(lp.dtype)  # (B, T-1)
    return (lp * mask).sum(-1), mask.sum(-1)


def _packed_sequence_logprobs(model, batch: dict[str, torch.Tensor], temperature: float,
                              mask_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`sequence_logprobs` of a padding-free (R, W) batch: per-token log-probs scatter-summed by
    example (``segment_ids``) into (N,) sums and counts."""
    out = model(**packed_inputs(model, batch), use_cache=False)
    lp = token_logprobs(out.logits, batch["input_ids"], temperature)  # (R, W-1)
    # Target t+1 at position 0 starts the next example: the logit before it belongs to the
    # previous example, so it is never scored (in a padded row it would be column 0, never a target).
    starts = batch["position_ids"][:, 1:] == 0  # (R, W-1)
    mask = batch[mask_key][:, 1:].masked_fill(starts, 0).to(lp.dtype)  # (R, W-1)
    seg = batch["segment_ids"][:, 1:]  # (R, W-1)
    n = num_examples(batch)
    return segment_sum(lp * mask, seg, n), segment_sum(mask, seg, n)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over positions where mask is 1 (all of them, or along ``dim``)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


@lru_cache(maxsize=64)
def _takes_logits_to_keep(forward_type: type) -> bool:
    return "logits_to_keep" in inspect.signature(forward_type.forward).parameters


def _causal_lm(model):
    """The transformers model under DDP / a value-head wrapper / peft."""
    for attr in ("module", "policy"):
        model = getattr(model, attr, model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def logits_window(model, keep_from: int, width: int) -> tuple[dict, int]:
    """(forward kwargs, first logit position) for logits of positions ``keep_from .. width-1``
    only: ``{"logits_to_keep": width - keep_from}`` when the model's forward takes it (every
    transformers causal LM of the conformance matrix does), else ``({}, 0)``: all logits."""
    if keep_from > 0 and _takes_logits_to_keep(type(_causal_lm(model))):
        return {"logits_to_keep": width - keep_from}, keep_from
    return {}, 0


def window_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, keep_from: int,
                    temperature: float = 1.0) -> torch.Tensor:
    """Logits (B, T - keep_from, V) of positions keep_from..T-1 (all positions when keep_from is
    0) -> (B, T-1) token log-probs aligned with ``input_ids[:, 1:]``, zero before ``keep_from``."""
    lp = token_logprobs(logits, input_ids[:, keep_from:], temperature)  # (B, T-1-keep_from)
    return F.pad(lp, (keep_from, 0))
