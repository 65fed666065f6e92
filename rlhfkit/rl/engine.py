"""Rollout engines: how a batch of prompt token ids becomes sampled response tokens.

Every engine samples from the same distribution -- softmax(logits / temperature) over the whole
vocabulary, stopping at the tokenizer's one EOS or ``max_new_tokens`` -- and returns the sampled
tokens only. Log-probs are never taken from an engine: :func:`rlhfkit.rl.rollout.generate_rollout`
recomputes them with the ordinary training forward, so the log-prob contract (first PPO ratio 1,
sampled log-probs equal the training forward's) is the same whichever engine sampled.

Engines (``rollout_engine`` in the RL config):

1. ``hf``: ``model.generate`` under a fully specified generation config of our own
   (:mod:`rlhfkit.generation`). The reference the others are tested against.
2. ``loop`` (default): a sampling loop of our own on the model's forward (:class:`LoopEngine`):

   - each distinct prompt is prefilled once and its KV cache is expanded to its ``num_samples``
     copies (``Cache.batch_repeat_interleave``): a GRPO group of k samples pays one prompt
     forward instead of k, and the prefill computes logits at the last position only;
   - finished sequences leave the batch: once rows have sampled EOS their cache rows are dropped
     (``Cache.batch_select_indices``), so later decode steps run on the unfinished rows only
     instead of decoding padding to the longest response (HF ``generate`` keeps every row);
   - tokens are drawn by inverse-CDF sampling with one uniform number per row per step, drawn for
     every row of the batch whether or not it is still decoding: which rows have finished (and
     so compaction) never changes which token a row samples, and a fixed seed gives the same
     tokens with or without compaction.
3. ``vllm``: generation on a vLLM engine colocated with training (:mod:`rlhfkit.rl.vllm_engine`).

A generation config shipped with the checkpoint (repetition penalty, extra EOS ids...) is never
applied by ``loop`` (it does not read one) nor by ``hf`` (swapped out, see generation.py) nor by
``vllm`` (started with ``generation_config="vllm"``).

Not shipped, measured (tiny Llama, 64 rows, 1 CPU thread, 2026-12-03): ``torch.compile`` of the
decode forward. With the dynamic KV cache the compiled step (``dynamic=True``, traced once in
23 s) made a rollout slower (0.17 s against 0.11 s eager); with a static cache at one fixed batch
size it saved ~20% per step (2.1 against 2.7 ms) but cannot shrink the batch as rows finish,
which saves more (a rollout's row-steps fall to its sampled tokens). On a GPU the vLLM engine is
the fast path.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch

from rlhfkit.data.collate import left_pad_prompts, position_ids_from_mask
from rlhfkit.generation import _base, generate, sampling_config


@dataclass
class Sampled:
    """Tokens sampled for B rows (group layout, as the prompt ids were given)."""

    tokens: list[list[int]]  # (B,) sampled tokens, through the first EOS or max_new_tokens long
    meta: dict = field(default_factory=dict)  # engine statistics (decode steps, row-steps, syncs)
    # (B,) the engine's own temperature-scaled log-prob of each sampled token, where it has them:
    # only a diagnostic (generate_rollout reports their largest gap to the training forward's)
    logprobs: list[list[float]] | None = None


def _cut_at_eos(rows: list[list[int]], eos: int) -> list[list[int]]:
    out = []
    for r in rows:
        out.append(r[:r.index(eos) + 1] if eos in r else r)
    return out


class HFEngine:
    """``model.generate`` in chunks of ``batch_size`` rows (every prompt repeated per sample)."""

    name = "hf"

    def sample(self, model, prompt_ids: list[list[int]], *, num_samples: int, max_new_tokens: int,
               temperature: float, eos: int, pad: int, batch_size: int) -> Sampled:
        device = next(model.parameters()).device
        rows = [list(p) for p in prompt_ids for _ in range(num_samples)]
        config = sampling_config(max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos,
                                 temperature=temperature)
        tokens: list[list[int]] = []
        for s in range(0, len(rows), batch_size):
            batch = {k: v.to(device) for k, v in left_pad_prompts(rows[s:s + batch_size], pad).items()}
            gen = generate(model, batch, config)[:, batch["input_ids"].shape[1]:]  # (b, <= max_new)
            tokens += gen.tolist()
        return Sampled(_cut_at_eos(tokens, eos), {"engine": self.name})


def sample_inverse_cdf(logits: torch.Tensor, u: torch.Tensor,
                       temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(b, V) logits, (b,) uniforms in [0, 1) -> ((b,) token ids drawn from softmax(logits / T),
    (b,) their log-probs).

    Inverse-CDF sampling: the token is the first index whose cumulative probability exceeds u.
    Exact for any distribution; u is clamped below the total mass so float rounding in the cumsum
    (total 1 +- 1e-7) can never select past the vocabulary."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)  # (b, V)
    cdf = logp.exp().cumsum(-1)  # (b, V)
    u = torch.minimum(u.to(cdf.dtype).unsqueeze(1), cdf[:, -1:] * (1 - 1e-6))  # (b, 1)
    tok = torch.searchsorted(cdf, u, right=True).squeeze(1).clamp(max=logits.shape[-1] - 1)  # (b,)
    return tok, logp.gather(1, tok.unsqueeze(1)).squeeze(1)


class LoopEngine:
    """Prefill once per prompt, expand the KV cache per sample, decode with compaction (module
    docstring, item 2). ``compact=False`` keeps finished rows decoding (for tests: the tokens
    must not change)."""

    name = "loop"

    def __init__(self, *, compact: bool = True):
        self.compact = compact

    @torch.no_grad()
    def sample(self, model, prompt_ids: list[list[int]], *, num_samples: int, max_new_tokens: int,
               temperature: float, eos: int, pad: int, batch_size: int) -> Sampled:
        k = num_samples
        per_chunk = max(1, batch_size // k)  # distinct prompts per chunk: k rows each
        tokens: list[list[int]] = []
        logprobs: list[list[float]] = []
        meta = {"engine": self.name, "decode_steps": 0, "row_steps": 0}
        for s in range(0, len(prompt_ids), per_chunk):
            out, lps, stats = self._sample_chunk(model, prompt_ids[s:s + per_chunk], k, max_new_tokens,
                                                 temperature, eos, pad)
            tokens += out
            logprobs += [lp[:len(t)] for t, lp in zip(out, lps)]
            for key, v in stats.items():
                meta[key] += v
        return Sampled(tokens, meta, logprobs)

    def _sample_chunk(self, model, prompt_ids, k: int, max_new: int, temperature: float, eos: int,
                      pad: int) -> tuple[list[list[int]], list[list[float]], dict]:
        from transformers import DynamicCache

        base = _base(model)
        device = next(model.parameters()).device
        params = inspect.signature(base.forward).parameters
        takes_pos = "position_ids" in params
        extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

        # Prefill the n distinct prompts once: (n, P) left-padded.
        batch = {key: v.to(device) for key, v in left_pad_prompts(prompt_ids, pad).items()}
        mask = batch["attention_mask"]  # (n, P)
        pos = position_ids_from_mask(mask)  # (n, P)
        cache = DynamicCache(config=base.config)
        kw = {"position_ids": pos} if takes_pos else {}
        logits = model(input_ids=batch["input_ids"], attention_mask=mask, past_key_values=cache,
                       use_cache=True, **kw, **extra).logits[:, -1]  # (n, V)
        # Expand to the group layout: row i * k + j is sample j of prompt i.
        if k > 1:
            cache.batch_repeat_interleave(k)
            logits, mask = logits.repeat_interleave(k, 0), mask.repeat_interleave(k, 0)
        b_total = logits.shape[0]
        last_pos = mask.sum(-1) - 1  # (B,) position of each row's last prompt token
        out = torch.full((b_total, max_new), pad, dtype=torch.long, device=device)
        out_lp = torch.zeros(b_total, max_new, device=device)
        rows = torch.arange(b_total, device=device)  # original row of each live cache row
        alive = torch.ones(b_total, dtype=torch.bool, device=device)  # per live cache row
        stats = {"decode_steps": 0, "row_steps": 0}
        for t in range(max_new):
            # One uniform per original row and step, whether or not the row still decodes: which
            # rows have left the batch never changes what the others sample.
            u = torch.rand(b_total, device=device)[rows]  # (b,)
            nxt, lp = sample_inverse_cdf(logits, u, temperature)  # (b,), (b,)
            out[rows[alive], t] = nxt[alive]
            out_lp[rows[alive], t] = lp[alive]
            alive = alive & (nxt != eos)
            if t == max_new - 1 or not bool(alive.any()):
                break
            n_live = int(alive.sum())
            if self.compact and n_live < len(rows):
                # Drop the finished rows from the cache and every per-row tensor.
                keep = alive.nonzero().squeeze(1)  # (n_live,)
                cache.batch_select_indices(keep)
                mask, last_pos, rows, nxt = mask[keep], last_pos[keep], rows[keep], nxt[keep]
                alive = alive[keep]  # all True
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)  # (b, P + t + 1)
            last_pos = last_pos + 1
            kw = {"position_ids": last_pos.unsqueeze(1)} if takes_pos else {}
            logits = model(input_ids=nxt.unsqueeze(1), attention_mask=mask, past_key_values=cache,
                            use_cache=True, **kw, **extra).logits[:, -1]  # (b, V)
            stats["decode_steps"] += 1
            stats["row_steps"] += mask.shape[0]  # rows forwarded: the decode cost
        return _cut_at_eos(out.tolist(), eos), out_lp.tolist(), stats


def make_engine(name: str, **kwargs):
    """The engine called ``name`` ('hf', 'loop', 'vllm'); kwargs go to its constructor."""
    if name == "hf":
        return HFEngine()
    if name == "loop":
        return LoopEngine(**kwargs)
    if name == "vllm":
        from rlhfkit.rl.vllm_engine import VLLMEngine

        return VLLMEngine(**kwargs)
    raise ValueError(f"rollout_engine must be 'hf', 'loop' or 'vllm', got {name!r}")
