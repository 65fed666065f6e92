"""Reward-model accuracy against the gold ordering vs the labelers' own agreement with it.

Full budget on the demo-size synthetic world (issue 3's benchmark figure; target: within 2
points). The test suite runs the same measurement on the small world with a 5-point bound.

    python bench/reward_ceiling.py [--output bench-runs/reward] [--temperature 0.6] [--epochs 2] [--lr 3e-4]

Prints one JSON line and writes it to <output>/reward_ceiling.json. Steps: build (or reuse) the
world, SFT, sample 4 responses per training prompt (4 rounds), label 3 pairs per prompt with a
Bradley-Terry labeler on the gold reward, train the reward model, then score held-out pairs
(2 samples per held-out prompt, 8 rounds) and compare with the gold ordering.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default="bench-runs/reward")
    ap.add_argument("--temperature", type=float, default=0.6,
                    help="labeler BT temperature (0.6: ~70%% agreement with the gold on SFT samples)")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--rounds", type=int, default=4, help="passes over the training prompts when sampling")
    ap.add_argument("--quick", action="store_true", help="the small test world instead of the demo world")
    args = ap.parse_args()

    from rlhfkit.config import RewardConfig
    from rlhfkit.data.loading import read_records, write_jsonl
    from rlhfkit.demo import sft_config, world_config
    from rlhfkit.feedback.simulate import SimulatedLabeler, make_preference_pairs
    from rlhfkit.synthetic.gold import gold_reward_fn
    from rlhfkit.synthetic.preferences import reward_vs_gold, sample_policy
    from rlhfkit.synthetic.world import build
    from rlhfkit.train.reward import train as reward_train
    from rlhfkit.train.sft import train as sft_train

    out = Path(args.output)
    t0 = time.time()
    world = build(world_config(out, quick=args.quick))
    sft_cfg = sft_config(world, out, quick=args.quick)
    sft_cfg.resume = True
    sft = sft_train(sft_cfg)
    train_prompts = [r["prompt"] for r in read_records(world / "prompts.jsonl")] * args.rounds
    eval_prompts = [r["prompt"] for r in read_records(world / "prompts_eval.jsonl")] * 8
    samples = [[s for s in g if s.strip()]
               for g in sample_policy(sft, train_prompts, samples_per_prompt=4, seed=1)]
    rows = make_preference_pairs(train_prompts, samples,
                                 SimulatedLabeler(temperature=args.temperature, seed=0),
                                 gold_reward_fn, rng_seed=3, pairs_per_prompt=3)
    data = write_jsonl(out / "prefs.jsonl", rows)
    held = sample_policy(sft, eval_prompts, samples_per_prompt=2, seed=2)
    keep = [i for i, s in enumerate(held) if all(x.strip() for x in s) and s[0] != s[1]]
    P, A, B = [eval_prompts[i] for i in keep], [held[i][0] for i in keep], [held[i][1] for i in keep]
    t_data = time.time() - t0
    # lr 3e-4: with the substance gold the labels at temperature 0.6 are weak (mean p_chosen 0.61) and
    # at 1e-3 the reward model stayed at chance (loss ln 2; 53.0% against the gold ordering, 2026-12-03).
    rm = reward_train(RewardConfig(model=str(sft), data=str(data), output_dir=str(out / "rm"),
                                   learning_rate=args.lr, per_device_batch_size=16, num_epochs=args.epochs,
                                   max_length=96,
                                   eval_fraction=0.05, log_every=50, warmup_ratio=0.05))
    res = reward_vs_gold(rm, P, A, B, labeler_temperature=args.temperature)
    summary = json.loads((out / "rm" / "summary.json").read_text())
    report = {"train_pairs": len(rows), "labeler_temperature": args.temperature, "epochs": args.epochs,
              **{k: v for k, v in res.items() if k != "length_audit"},
              "heldout_label_accuracy": summary["final"]["eval_accuracy"],
              "ece": summary["final"]["eval_ece"],
              "length_corr": res["length_audit"]["length_corr"], "data_seconds": round(t_data, 1),
              "total_seconds": round(time.time() - t0, 1)}
    (out / "reward_ceiling.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
