"""Sampling from a policy: the one place that calls ``model.generate``.

Implementation details:

1. The sampling distribution is exactly the one whose log-probs the rest of the package computes
   (:func:`rlhfkit.logprobs.token_logprobs`): softmax(logits / temperature), optionally cut by
   ``top_k`` / ``top_p`` where a stage allows them (evaluation sampling and feedback collection;
   RL rollouts have no such keys). ``generate`` runs under a generation config of our own that
   sets every processor explicitly, and the checkpoint's ``generation_config.json`` is swapped out
   for the call: transformers otherwise fills every unset field from it, so a shipped
   ``repetition_penalty`` (Qwen2.5: 1.05), ``no_repeat_ngram_size``, ``min_new_tokens``,
   ``bad_words_ids``, ``suppress_tokens`` or extra EOS ids would silently change what is sampled
   while log-probs are computed from the plain softmax: PPO / RLOO / GRPO would be off-policy and
   every sampled KL estimate biased. The settings that are ignored are logged once per model.
2. Prompts are left-padded with the real PAD token and an attention mask (RLHF-DETAILS item 8);
   prompt ids come from :func:`rlhfkit.data.collate.encode_prompts` (one BOS, chat templates
   respected) and are cut from the left to fit the model's context with a counted warning.
3. Everything after the first EOS is cut (item 10) and whether the sample ended with EOS is kept,
   because "stopped by itself" is part of the completion format.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import torch

from rlhfkit.data.collate import encode_prompts, fit_prompts, left_pad_prompts

log = logging.getLogger(__name__)

# Processors a checkpoint's generation_config.json may switch on, with their neutral values
# (temperature / top-k / top-p / do_sample are always set by sampling_config, so never ignored).
_NEUTRAL = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "min_length": 0, "min_new_tokens": None,
            "bad_words_ids": None, "suppress_tokens": None, "begin_suppress_tokens": None,
            "forced_bos_token_id": None, "forced_eos_token_id": None, "sequence_bias": None,
            "exponential_decay_length_penalty": None, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0,
            "typical_p": 1.0, "min_p": None, "encoder_repetition_penalty": 1.0, "guidance_scale": None,
            "watermarking_config": None, "renormalize_logits": False}
_warned: set[int] = set()


def sampling_config(*, max_new_tokens: int, pad_token_id: int, eos_token_id: int, temperature: float = 1.0,
                    top_k: int = 0, top_p: float = 1.0):
    """A fully specified ``GenerationConfig``: temperature sampling (greedy when temperature is
    0), optional top-k / top-p, one EOS id, nothing else."""
    from transformers import GenerationConfig

    sample = temperature > 0
    return GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=sample, num_beams=1,
        temperature=temperature if sample else 1.0, top_k=top_k if sample else 0,
        top_p=top_p if sample else 1.0,
        pad_token_id=pad_token_id, eos_token_id=eos_token_id, bos_token_id=None, use_cache=True,
        repetition_penalty=1.0, no_repeat_ngram_size=0, min_length=0, typical_p=1.0, epsilon_cutoff=0.0,
        eta_cutoff=0.0, encoder_repetition_penalty=1.0, renormalize_logits=False)


def ignored_settings(model) -> dict:
    """The distribution-changing settings of the model's own generation config that sampling here
    does not apply (module docstring, item 1)."""
    gc = getattr(_base(model), "generation_config", None)
    if gc is None:
        return {}
    out = {}
    for key, neutral in _NEUTRAL.items():
        v = getattr(gc, key, None)
        if v is not None and v != neutral:
            out[key] = v
    eos = getattr(gc, "eos_token_id", None)
    if isinstance(eos, list) and len(eos) > 1:
        out["eos_token_id"] = eos
    return out


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@contextmanager
def own_generation_config(model, config):
    """Swap the checkpoint's generation config for ``config`` during ``generate``."""
    base = _base(model)
    if id(base) not in _warned:
        _warned.add(id(base))
        ignored = ignored_settings(base)
        if ignored:
            log.warning("the model's generation_config.json sets %s; samples are drawn from the plain "
                        "temperature softmax whose log-probs are trained on, so these are not applied",
                        ", ".join(f"{k}={v}" for k, v in sorted(ignored.items())))
    saved = base.generation_config
    base.generation_config = config
    try:
        yield config
    finally:
        base.generation_config = saved


def generate(model, batch: dict[str, torch.Tensor], config, **kwargs):
    """``model.generate(**batch)`` under exactly ``config`` (see :func:`own_generation_config`).
    Extra ``kwargs`` (e.g. ``output_scores=True, return_dict_in_generate=True``) pass through."""
    with own_generation_config(model, config):
        return model.generate(**batch, generation_config=config, **kwargs)


def context_limit(model, max_new_tokens: int) -> int | None:
    """Longest prompt that leaves room for ``max_new_tokens`` in the model's context, or None
    when the config states no context length."""
    n = getattr(_base(model).config, "max_position_embeddings", None)
    if n is None:
        return None
    if max_new_tokens >= n:
        from rlhfkit.errors import ConfigError

        raise ConfigError(f"max_new_tokens: {max_new_tokens} leaves no room for a prompt in the model's "
                          f"context of {n} tokens")
    return n - max_new_tokens


def prompt_ids_for(model, tokenizer, prompts: list[str], *, max_new_tokens: int,
                   max_prompt_length: int | None = None, what: str = "prompts") -> list[list[int]]:
    """Token ids of ``prompts``, cut from the left to ``max_prompt_length`` and to the model's
    context minus ``max_new_tokens`` (a leading BOS is kept), with one warning counting the cuts."""
    ids = encode_prompts(tokenizer, prompts)
    limits = [x for x in (max_prompt_length, context_limit(model, max_new_tokens)) if x is not None]
    if not limits:
        return ids
    limit = min(limits)
    ids, n = fit_prompts(ids, limit, tokenizer.bos_token_id)
    if n:
        log.warning("%d of %d %s were longer than %d tokens and were cut from the left",
                    n, len(ids), what, limit)
    return ids


def truncate_after_eos(new_ids: torch.Tensor, eos_id: int,
                       pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, R) generated columns -> (ids with PAD after the first EOS, (B, R) mask through the
    first EOS, (B,) ended_with_eos). A row without EOS keeps all R tokens (even sampled PADs:
    the mask is positional, not by token id). The one place a generation is cut: rollouts and
    evaluation samples end at the same token."""
    b, r = new_ids.shape
    is_eos = new_ids == eos_id  # (B, R)
    ended = is_eos.any(dim=1)  # (B,)
    # first EOS column, or R when there is none; argmax returns the first maximum
    first = torch.where(ended, is_eos.int().argmax(dim=1), torch.full((b,), r, device=new_ids.device))
    cols = torch.arange(r, device=new_ids.device).expand(b, r)  # (B, R)
    mask = (cols <= first.unsqueeze(1)).long()  # (B, R) includes the EOS itself
    return new_ids.masked_fill(mask == 0, pad_id), mask, ended


@torch.no_grad()
def sample_completions(model, tokenizer, prompts: list[str], *, max_new_tokens: int = 48,
                       temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                       batch_size: int = 32, seed: int = 0, return_ids: bool = False) -> list[dict]:
    """Sample one completion per prompt. ``temperature == 0`` means greedy decoding.

    Returns rows ``{"prompt", "completion", "ended_with_eos", "num_tokens"}``; with
    ``return_ids`` also ``prompt_ids`` and ``completion_ids`` (the sampled tokens, with the EOS
    if one was sampled): scoring a sample's log-prob must use these ids, since re-tokenising the
    decoded text need not give back the tokens that were sampled.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    torch.manual_seed(seed)  # generate() draws from the global generator
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    config = sampling_config(max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos,
                             temperature=temperature, top_k=top_k, top_p=top_p)
    all_ids = prompt_ids_for(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
    out: list[dict] = []
    for start in range(0, len(prompts), batch_size):
        chunk, ids = prompts[start:start + batch_size], all_ids[start:start + batch_size]
        batch = {k: v.to(device) for k, v in left_pad_prompts(ids, pad).items()}
        gen = generate(model, batch, config)
        new, mask, ended_rows = truncate_after_eos(gen[:, batch["input_ids"].shape[1]:], eos, pad)  # (B, R)
        rows = zip(chunk, ids, new.tolist(), mask.sum(1).tolist(), ended_rows.tolist())
        for prompt, p_ids, row, n, ended in rows:
            toks = row[:n - 1] if ended else row[:n]  # the text ends before the EOS
            out.append({"prompt": prompt, "completion": tokenizer.decode(toks, skip_special_tokens=True),
                        "ended_with_eos": ended, "num_tokens": len(toks) + int(ended)})
            if return_ids:
                out[-1].update(prompt_ids=list(p_ids), completion_ids=toks + [eos] * ended)
    model.train(was_training)
    return out
