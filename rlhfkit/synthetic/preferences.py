"""Preference data for the synthetic world: sample responses from a policy, let a simulated
labeler (Bradley-Terry on the gold reward) compare them. The stand-in for people that tests,
the demo and benchmarks use; the rows are TRL preference rows that `rlhf reward`/`rlhf dpo` read.
"""

from __future__ import annotations

from pathlib import Path

from rlhfkit.feedback.simulate import SimulatedLabeler, make_preference_pairs
from rlhfkit.generation import sample_completions
from rlhfkit.modeling import load_causal_lm, load_tokenizer
from rlhfkit.synthetic.gold import gold_reward_fn


def sample_policy(model_dir: str | Path, prompts: list[str], *, samples_per_prompt: int = 2,
                  max_new_tokens: int = 48, temperature: float = 1.0, seed: int = 0) -> list[list[str]]:
    """``samples_per_prompt`` completions for each prompt (prompts repeated in one batched pass)."""
    tok = load_tokenizer(str(model_dir))
    model = load_causal_lm(str(model_dir), tok)
    flat = [p for p in prompts for _ in range(samples_per_prompt)]
    rows = sample_completions(model, tok, flat, max_new_tokens=max_new_tokens, temperature=temperature,
                              seed=seed, batch_size=256)
    return [[r["completion"] for r in rows[i * samples_per_prompt:(i + 1) * samples_per_prompt]]
            for i in range(len(prompts))]


def labelled_pairs(model_dir: str | Path, prompts: list[str], labeler: SimulatedLabeler, *,
                   samples_per_prompt: int = 2, pairs_per_prompt: int = 1, max_new_tokens: int = 48,
                   seed: int = 0) -> list[dict]:
    """Sample from ``model_dir`` and label pairs with ``labeler`` against the gold reward."""
    samples = sample_policy(model_dir, prompts, samples_per_prompt=samples_per_prompt,
                            max_new_tokens=max_new_tokens, seed=seed)
    return make_preference_pairs(prompts, samples, labeler, gold_reward_fn, rng_seed=seed,
                                 pairs_per_prompt=pairs_per_prompt)
