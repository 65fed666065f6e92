"""Sampling completions for prompts (evaluation and sample dumps).

Prompts are left-padded with the real PAD token and an attention mask (RLHF-DETAILS item 8);
everything after the first EOS is cut (item 10) and whether the sample ended with EOS is kept,
because "stopped by itself" is part of the completion format.
"""

from __future__ import annotations

import torch

from rlhfkit.data.collate import left_pad_prompts


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
    out: list[dict] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        ids = tokenizer(chunk, add_special_tokens=True)["input_ids"]
        ids = [p[:-1] if p and p[-1] == eos else p for p in ids]  # never EOS inside a prompt
        batch = {k: v.to(device) for k, v in left_pad_prompts(ids, pad).items()}
        kwargs = dict(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p) \
            if temperature > 0 else dict(do_sample=False)
        gen = model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos,
                             **kwargs)
        new = gen[:, batch["input_ids"].shape[1]:]  # (B, <=max_new_tokens)
        for prompt, p_ids, row in zip(chunk, ids, new.tolist()):
            ended = eos in row
            toks = row[:row.index(eos)] if ended else [t for t in row if t != pad]
            out.append({"prompt": prompt, "completion": tokenizer.decode(toks, skip_special_tokens=True),
                        "ended_with_eos": ended, "num_tokens": len(toks) + int(ended)})
            if return_ids:
                out[-1].update(prompt_ids=list(p_ids), completion_ids=toks + [eos] * ended)
    model.train(was_training)
    return out
