"""`rlhf demo`: the pipeline on the synthetic world, end to end, with a printed table.

Today the pipeline is: build the world (corpus, tokenizer, base LM) -> SFT -> evaluate base and
SFT policies on held-out prompts (completion-format rate, EOS rate, gold reward, length).
Later stages (reward model, PPO/DPO, feedback) extend this same entry point.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from rlhfkit.config import SFTConfig, SynthConfig


def world_config(output: Path, quick: bool) -> SynthConfig:
    if quick:
        return SynthConfig(output_dir=str(output / "world"), n_docs=1500, hidden_size=128, num_layers=2,
                           pretrain_steps=200, pretrain_batch_size=16, n_sft=1200, n_prompts=300)
    return SynthConfig(output_dir=str(output / "world"))


def sft_config(world: Path, output: Path, quick: bool) -> SFTConfig:
    return SFTConfig(
        model=str(world / "base"), data=str(world / "sft.jsonl"), eval_data=str(world / "sft_eval.jsonl"),
        output_dir=str(output / "sft"), learning_rate=1e-3, per_device_batch_size=16,
        max_steps=60 if quick else 250, warmup_ratio=0.05, max_length=96, log_every=10,
        eval_every=0, save_every=50,
    )


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


def run_demo(output: str = "runs/demo", quick: bool = False) -> dict:
    from rlhfkit.synthetic.world import build
    from rlhfkit.train.sft import train as sft_train

    out = Path(output)
    world = build(world_config(out, quick))
    cfg = sft_config(world, out, quick)
    cfg.resume = True  # a re-run continues (or reuses) an interrupted or finished SFT run
    sft_dir = sft_train(cfg)
    prompts = [json.loads(ln)["prompt"] for ln in (world / "prompts_eval.jsonl").read_text().splitlines()]
    prompts = prompts[:32 if quick else 100]
    results = {"base": evaluate_policy(world / "base", prompts), "sft": evaluate_policy(sft_dir, prompts)}
    summary = json.loads((out / "sft" / "summary.json").read_text())
    table = {name: {k: v for k, v in r.items() if k != "samples"} for name, r in results.items()}
    (out / "demo_results.json").write_text(json.dumps({"policies": results, "sft": summary}, indent=2))
    print(f"\nrlhfkit demo ({'quick' if quick else 'full'}) — held-out prompts: {len(prompts)}")
    print(f"SFT held-out loss: {summary['initial_eval_loss']:.3f} -> {summary['final_eval_loss']:.3f}")
    print(f"{'policy':<8}{'format':>9}{'eos':>8}{'gold':>9}{'length':>9}")
    for name, r in table.items():
        print(f"{name:<8}{r['format_rate']:>9.2f}{r['eos_rate']:>8.2f}{r['gold_mean']:>9.3f}{r['length_mean']:>9.1f}")
    for name, r in results.items():
        print(f"\n{name} samples:")
        for s in r["samples"][:3]:
            print(f"  {s['prompt']!r} -> {s['completion']!r}")
    print(f"\nresults: {out / 'demo_results.json'}")
    return table
