"""A quick look at one policy on the synthetic world, for tests: does it follow the completion
format, end with EOS, and what gold reward does it earn? (``rlhf evaluate`` is the full
comparison of several policies; this samples one policy once per prompt.)"""

from __future__ import annotations

import statistics
from pathlib import Path


def evaluate_policy(model_dir: str | Path, prompts: list[str], *, max_new_tokens: int = 48,
                    seed: int = 0) -> dict:
    """Sample once per prompt (temperature 1) and measure the completion format and gold reward."""
    from rlhfkit.generation import sample_completions
    from rlhfkit.modeling import load_causal_lm, load_tokenizer
    from rlhfkit.synthetic.gold import gold_rewards
    from rlhfkit.synthetic.grammar import follows_format

    tok = load_tokenizer(str(model_dir))
    model = load_causal_lm(str(model_dir), tok)
    rows = sample_completions(model, tok, prompts, max_new_tokens=max_new_tokens, temperature=1.0, seed=seed)
    fmt = [r["ended_with_eos"] and follows_format(r["completion"]) for r in rows]
    gold = gold_rewards([r["completion"] for r in rows], [r["prompt"] for r in rows])
    return {
        "format_rate": sum(fmt) / len(rows),
        "eos_rate": sum(r["ended_with_eos"] for r in rows) / len(rows),
        "gold_mean": statistics.fmean(gold),
        "length_mean": statistics.fmean(r["num_tokens"] for r in rows),
        "samples": rows[:5],
    }
