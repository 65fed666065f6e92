"""Rollouts: sample responses to prompts and record what PPO / RLOO / GRPO need about them.

Implementation details (RLHF-DETAILS items 7-12):

1. Prompts are tokenised without EOS; an engine (:mod:`rlhfkit.rl.engine`; default: our own
   KV-cache loop, which prefills each prompt once per group and drops finished rows; ``generate``
   and vLLM are the others) returns the sampled tokens, and the rollout is laid out from them.
   Engines return tokens, never the log-probs that are trained on (item 5).
2. Sampling: temperature (0.7 is common in RL), at most ``max_new_tokens``, stopping at EOS, and
   nothing else: no engine applies a checkpoint's ``generation_config.json`` (repetition penalty,
   n-gram blocking, minimum length, bad words, extra EOS ids...), which would make the sampler
   differ from the distribution whose log-probs are trained on. No top-k / top-p either:
   truncated sampling with log-probs of the full softmax is off-policy (TRL and OpenRLHF accept
   that bias; we do not).
   Prompts longer than ``max_prompt_length`` (default: the context minus ``max_new_tokens``) are
   cut from the left with a counted warning.
3. Everything after the first EOS is padding: its ids are set to PAD and it is 0 in
   ``attention_mask`` and ``response_mask``. ``ended_with_eos`` looks at the response only.
4. The sequences keep the generation layout: (B, P) left-padded prompt then (B, R) response
   columns, with ``position_ids = cumsum(mask) - 1``. Training forwards reuse these tensors.
5. Log-probs of the sampled tokens are recomputed with one ordinary forward pass (not taken from
   the engine's incremental KV-cache path) with logits divided by the same temperature, via the
   shared :func:`rlhfkit.logprobs.token_logprobs`. The training forward is then the same
   computation, so the first PPO ratio is 1 to float error in fp32, and these log-probs equal
   those of the distribution the engine sampled from (tests/test_conformance.py and
   tests/test_rollout_engine.py check both on eight architectures with hostile generation
   configs); the largest difference from the engine's own log-probs is reported as
   ``engine_logprob_gap``.
6. The model is put in eval mode (no dropout, item 7) while sampling and scoring.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from rlhfkit.data.collate import left_pad_prompts, pad as pad_to, position_ids_from_mask
from rlhfkit.generation import prompt_ids_for, truncate_after_eos
from rlhfkit.logprobs import logits_window, window_logprobs
from rlhfkit.rl.engine import LoopEngine


@dataclass
class Rollout:
    """One batch of sampled episodes; B = number of prompts * num_samples (group layout:
    row ``i * k + j`` is sample j of prompt i)."""

    prompts: list[str]  # (B,) prompt text of each row (repeated k times)
    query_ids: list[list[int]]  # (B,) unpadded prompt tokens
    response_ids: list[list[int]]  # (B,) sampled tokens through the first EOS, unpadded
    input_ids: torch.Tensor  # (B, T) left-padded prompt + response, PAD after EOS; T = P + R
    attention_mask: torch.Tensor  # (B, T) 1 on real prompt and response tokens
    position_ids: torch.Tensor  # (B, T) cumsum(attention_mask) - 1, 0 on padding
    response_mask: torch.Tensor  # (B, T) 1 on response tokens through the first EOS
    logprobs: torch.Tensor  # (B, T-1) temperature-scaled log p of input_ids[:, 1:], 0 off the response
    texts: list[str]  # (B,) decoded responses, truncated before EOS, special tokens skipped
    ended_with_eos: torch.Tensor  # (B,) bool: EOS was sampled within max_new_tokens
    prompt_width: int  # P, the column where responses start
    temperature: float = 1.0
    meta: dict = field(default_factory=dict)  # timing: gen_seconds, logprob_seconds

    @property
    def token_mask(self) -> torch.Tensor:
        """(B, T-1) response mask aligned with ``logprobs`` (and any token_logprobs output)."""
        return self.response_mask[:, 1:]

    @property
    def response_lengths(self) -> torch.Tensor:
        """(B,) number of response tokens, EOS included."""
        return self.response_mask.sum(-1)

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "position_ids": self.position_ids}


@torch.no_grad()
def forward_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     position_ids: torch.Tensor, response_mask: torch.Tensor, *,
                     temperature: float = 1.0, batch_size: int = 64, prompt_width: int = 0) -> torch.Tensor:
    """(B, T-1) temperature-scaled log-probs of the response tokens (0 elsewhere), computed in
    chunks of ``batch_size`` rows without gradients: for the rollout policy, the frozen
    reference and any other scorer of the same sequences. With ``prompt_width`` P (responses
    start at column P) logits are computed from column P-1 on only (:func:`logits_window`)."""
    out = []
    kw, start = logits_window(model, max(prompt_width - 1, 0), input_ids.shape[1])
    for s in range(0, input_ids.shape[0], batch_size):
        sl = slice(s, s + batch_size)
        logits = model(input_ids=input_ids[sl], attention_mask=attention_mask[sl],
                       position_ids=position_ids[sl], use_cache=False, **kw).logits  # (b, T - start, V)
        lp = window_logprobs(logits, input_ids[sl], start, temperature)  # (b, T-1)
        out.append(lp * response_mask[sl, 1:].to(lp.dtype))
    return torch.cat(out)


@torch.no_grad()
def generate_rollout(model, tokenizer, prompts: Sequence[str], *, num_samples: int = 1,
                     max_new_tokens: int = 48, temperature: float = 0.7, batch_size: int = 64,
                     seed: int | None = None, prompt_ids: list[list[int]] | None = None,
                     max_prompt_length: int | None = None, compute_logprobs: bool = True,
                     engine=None) -> Rollout:
    """Sample ``num_samples`` responses per prompt and build a :class:`Rollout`.

    ``prompt_ids`` may be given instead of tokenising ``prompts`` (they must not end in EOS and
    must already fit: see :func:`rlhfkit.generation.prompt_ids_for`); otherwise the prompts are
    tokenised and cut to ``max_prompt_length`` and the model's context here.
    ``seed`` reseeds torch's global generator, which every engine draws from; None leaves it alone (a
    training loop that checkpoints RNG state wants that). ``compute_logprobs=False`` skips the
    policy forward and leaves ``logprobs`` zero, for a caller that takes them from its own
    training forward (one update over the whole rollout: the ratio is 1 either way).
    """
    if temperature <= 0:
        raise ValueError("rollouts sample: temperature must be > 0 (log-probs divide by it)")
    if seed is not None:
        torch.manual_seed(seed)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if pad is None or pad == eos:
        raise ValueError("the tokenizer needs a PAD token distinct from EOS (load it with load_tokenizer)")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ids = prompt_ids if prompt_ids is not None else prompt_ids_for(
        model, tokenizer, list(prompts), max_new_tokens=max_new_tokens, max_prompt_length=max_prompt_length)
    t0 = time.perf_counter()
    engine = engine if engine is not None else LoopEngine()
    sampled = engine.sample(model, ids, num_samples=num_samples, max_new_tokens=max_new_tokens,
                            temperature=temperature, eos=eos, pad=pad, batch_size=batch_size)
    gen_seconds = time.perf_counter() - t0
    # Group layout: each prompt repeated k times, contiguously.
    ids = [list(p) for p in ids for _ in range(num_samples)]
    texts_in = [p for p in prompts for _ in range(num_samples)]

    # One (B, T) tensor for the whole rollout: prompts left-padded to the longest prompt P,
    # responses right-padded to the longest response R.
    prompt_batch = left_pad_prompts(ids, pad)
    p_width = prompt_batch["input_ids"].shape[1]
    new = pad_to(sampled.tokens, pad, "right")  # (B, R)
    new, resp_mask, ended = truncate_after_eos(new, eos, pad)  # (B, R), (B, R), (B,)

    input_ids = torch.cat([prompt_batch["input_ids"], new], dim=1)  # (B, T)
    attention_mask = torch.cat([prompt_batch["attention_mask"], resp_mask], dim=1)
    response_mask = torch.cat([torch.zeros_like(prompt_batch["attention_mask"]), resp_mask], dim=1)
    position_ids = position_ids_from_mask(attention_mask)
    t1 = time.perf_counter()
    if compute_logprobs:
        logprobs = forward_logprobs(model, input_ids.to(device), attention_mask.to(device),
                                    position_ids.to(device), response_mask.to(device),
                                    temperature=temperature, batch_size=batch_size,
                                    prompt_width=p_width).cpu()
    else:
        logprobs = torch.zeros(input_ids.shape[0], input_ids.shape[1] - 1)
    logprob_seconds = time.perf_counter() - t1
    model.train(was_training)
    meta = {**sampled.meta, "gen_seconds": gen_seconds, "logprob_seconds": logprob_seconds,
            "new_tokens": int(resp_mask.sum())}
    if compute_logprobs and sampled.logprobs is not None:
        # How far the engine's incremental (KV-cache) log-probs are from the training forward's:
        # float noise (~1e-6 in fp32) for a correct engine; large values mean it sampled from a
        # different distribution than the one trained on.
        engine_lp = pad_float(sampled.logprobs, (new.shape[0], new.shape[1]))
        ours = logprobs[:, p_width - 1:]  # (B, R): log p of the response columns
        gap = (engine_lp - ours).abs() * resp_mask  # (B, R)
        meta["engine_logprob_gap"] = float(gap.max()) if gap.numel() else 0.0

    response_ids = [r[:int(n)] for r, n in zip(new.tolist(), resp_mask.sum(-1).tolist())]
    texts = [tokenizer.decode(r[:-1] if e else r, skip_special_tokens=True)
             for r, e in zip(response_ids, ended.tolist())]
    return Rollout(prompts=texts_in, query_ids=ids, response_ids=response_ids, input_ids=input_ids,
                   attention_mask=attention_mask, position_ids=position_ids, response_mask=response_mask,
                   logprobs=logprobs, texts=texts, ended_with_eos=ended, prompt_width=p_width,
                   temperature=temperature,
                   meta=meta)


def pad_float(rows: list[list[float]], shape: tuple[int, int]) -> torch.Tensor:
    """Right-pad float rows with 0 into a tensor of ``shape`` (rows longer than it are cut)."""
    out = torch.zeros(shape)
    for i, r in enumerate(rows):
        r = r[:shape[1]]
        out[i, :len(r)] = torch.tensor(r, dtype=out.dtype)
    return out


def apply_no_eos_penalty(scores: torch.Tensor, ended_with_eos: torch.Tensor, penalty: float | None,
                         mode: Literal["replace", "subtract"] = "replace") -> torch.Tensor:
    """Item 11: responses that never emitted EOS get ``penalty`` as their score ("replace", e.g.
    -1 on a mean-0 reward scale) or have ``penalty`` subtracted ("subtract"). None: unchanged."""
    scores = scores.float()
    if penalty is None:
        return scores
    missing = ~ended_with_eos.bool().to(scores.device)  # (B,)
    if mode == "replace":
        return torch.where(missing, torch.full_like(scores, penalty), scores)
    if mode == "subtract":
        return scores - penalty * missing.to(scores.dtype)
    raise ValueError(f"no-EOS penalty mode must be 'replace' or 'subtract', got {mode!r}")


def score_rollout(rollout: Rollout, reward_fn: Callable[[list[str], list[str]], Sequence[float]], *,
                  no_eos_penalty: float | None = None,
                  penalty_mode: Literal["replace", "subtract"] = "replace"
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Score the truncated texts (item 10) with ``reward_fn(prompts, responses) -> (B,)`` (e.g.
    ``lambda p, r: RewardScorer(...).score(p, r)[0]`` or a gold function), then apply the no-EOS
    penalty. Returns ``(raw scores, penalised scores)``, both (B,) fp32."""
    raw = torch.as_tensor(list(map(float, reward_fn(rollout.prompts, rollout.texts))), dtype=torch.float32)
    return raw, apply_no_eos_penalty(raw, rollout.ended_with_eos, no_eos_penalty, penalty_mode)
