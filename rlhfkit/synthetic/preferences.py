"""Preference data for the synthetic world: sample responses from a policy, let a simulated
labeler (Bradley-Terry on the gold reward) compare them. The stand-in for people that tests,
the demo and benchmarks use; the rows are TRL preference rows that `rlhf reward`/`rlhf dpo` read.
"""

from __future__ import annotations

from pathlib import Path

from rlhfkit.data.loading import read_records, write_jsonl
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
    """Sample from ``model_dir`` and label pairs with ``labeler`` against the gold reward.
    Empty completions (EOS first) are no response to compare and are left out."""
    samples = sample_policy(model_dir, prompts, samples_per_prompt=samples_per_prompt,
                            max_new_tokens=max_new_tokens, seed=seed)
    samples = [[s for s in group if s.strip()] for group in samples]
    return make_preference_pairs(prompts, samples, labeler, gold_reward_fn, rng_seed=seed,
                                 pairs_per_prompt=pairs_per_prompt)


def preference_splits(policy_dir: str | Path, world: str | Path, output: str | Path, *,
                      samples_per_prompt: int = 4, pairs_per_prompt: int = 3,
                      labeler_temperature: float = 0.1, max_new_tokens: int = 48,
                      seed: int = 0) -> dict[str, Path]:
    """Labelled pairs on the world's training prompts (``train.jsonl``) and held-out prompts
    (``eval.jsonl``) under ``output``: TRL preference columns plus the labeler's ``p_chosen``,
    ``tie`` and gold columns. Returns the two paths."""
    world, out = Path(world), Path(output)
    files = {}
    for i, (split, source) in enumerate((("train", "prompts.jsonl"), ("eval", "prompts_eval.jsonl"))):
        prompts = [r["prompt"] for r in read_records(world / source)]
        rows = labelled_pairs(policy_dir, prompts, SimulatedLabeler(labeler_temperature, seed=seed + i),
                              samples_per_prompt=samples_per_prompt, pairs_per_prompt=pairs_per_prompt,
                              max_new_tokens=max_new_tokens, seed=seed + i)
        files[split] = write_jsonl(out / f"{split}.jsonl", rows)
    return files


def reward_vs_gold(model_dir: str | Path, prompts: list[str], resp_a: list[str], resp_b: list[str], *,
                   labeler_temperature: float, max_length: int = 96) -> dict:
    """How well a reward model orders held-out pairs by the gold reward.

    Returns ``accuracy_vs_gold`` (pairs with equal gold left out), the Bayes accuracy of a
    Bradley-Terry labeler with ``labeler_temperature`` on the same pairs (how often such a
    labeler agrees with the gold ordering -- the RLHF literature's yardstick for labels), the
    gap between the two, and a length-bias audit with "chosen" = the gold-better response.
    """
    import numpy as np

    from rlhfkit.evaluate.metrics import length_bias_audit
    from rlhfkit.feedback.simulate import bayes_accuracy
    from rlhfkit.scoring import RewardScorer

    ga, gb = np.array(gold_reward_fn(prompts, resp_a)), np.array(gold_reward_fn(prompts, resp_b))
    scorer = RewardScorer(model_dir, max_length=max_length)
    ra, _ = scorer.score(prompts, resp_a)
    rb, _ = scorer.score(prompts, resp_b)
    m = ga != gb
    acc = float(np.mean(np.sign(ra - rb)[m] == np.sign(ga - gb)[m]))
    ceiling = bayes_accuracy(ga[m], gb[m], labeler_temperature)
    a_better = ga > gb
    la, lb = np.array([len(x.split()) for x in resp_a]), np.array([len(x.split()) for x in resp_b])
    audit = length_bias_audit(np.where(a_better, ra, rb)[m], np.where(a_better, rb, ra)[m],
                              np.where(a_better, la, lb)[m], np.where(a_better, lb, la)[m])
    return {"pairs": int(m.sum()), "accuracy_vs_gold": acc, "labeler_bayes_accuracy": ceiling,
            "gap_points": 100 * (ceiling - acc), "length_audit": audit}
