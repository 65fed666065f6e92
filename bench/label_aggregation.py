"""Reward models on majority vote vs Dawid-Skene soft labels, from a crowd of uneven labelers.

Issue 16, item 3's benchmark figure (not a test). On the synthetic world, every training pair is
labelled by five simulated Bradley-Terry labelers on the gold reward: three good ones and two
near-random ones (temperatures ``--temperatures``). The labels are aggregated two ways and a reward
model is trained on each with the same settings:

* ``majority``: the majority of the five (hard labels), what ``rlhf label export aggregate=majority`` writes;
* ``dawid_skene``: the Dawid-Skene posterior (``rlhfkit.feedback.aggregate.fit_pair_labels``, the function
  ``aggregate=dawid_skene`` uses), rows oriented by its argmax with ``label_confidence``, trained on as
  soft Bradley-Terry targets; ``--hard`` adds a run on the same orientation without the confidence.

Each reward model's accuracy against the gold ordering on held-out pairs is printed next to the
ceilings of the labels on those pairs, in closed form: the Bayes-optimal aggregate of the five labels
(labeler t is right with p_t = sigmoid(|g_A - g_B| / T_t), independently, so the optimal vote
weighs labeler t by log(p_t / (1 - p_t)) = |g_A - g_B| / T_t, i.e. by 1/T_t; its accuracy is summed
over the 2^5 outcomes), majority vote of the five, and the best single labeler. As in
``bench/reward_ceiling.py``, these bound a *label* source pair by pair; a reward model that
generalises across pairs can exceed them. Also printed: how often each aggregate agrees with the
gold on the training pairs, and Dawid-Skene's estimated accuracy of each labeler next to its actual
agreement with the gold there.

    python bench/label_aggregation.py [--output bench-runs/label-aggregation] [--quick] [--epochs 2] \
        [--seed 0] [--eval-rounds 8] [--hard]

Prints one JSON line and writes it to <output>/label_aggregation-seed<seed>.json. The world, the SFT
policy and the samples are built once under --output and reused by a rerun (and by other --seed values).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np


def vote_accuracy(gold_a: np.ndarray, gold_b: np.ndarray, temperatures: list[float],
                  weights: list[float]) -> float:
    """Mean over pairs of P(the weighted vote of independent BT labelers picks the gold-better one);
    a weighted tie counts one half. Pairs with equal gold are left out."""
    d = np.abs(gold_a - gold_b)
    d = d[d > 0]
    p = np.stack([1 / (1 + np.exp(-d / t)) for t in temperatures], axis=1)  # (n, 5) P(labeler right)
    w = np.asarray(weights)
    total = np.zeros(len(d))
    for right in itertools.product([0, 1], repeat=len(temperatures)):
        r = np.asarray(right)
        prob = np.prod(np.where(r == 1, p, 1 - p), axis=1)  # (n,)
        score = float(np.sum(w * (2 * r - 1)))
        total += prob * (1.0 if score > 0 else 0.5 if score == 0 else 0.0)
    return float(total.mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default="bench-runs/label-aggregation")
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.6, 0.6, 0.6, 8.0, 8.0],
                    help="BT temperatures of the labelers (0.6: ~73%% agreement with gold; 8: near-random)")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=4, help="passes over the training prompts when sampling")
    ap.add_argument("--quick", action="store_true", help="the small test world instead of the demo world")
    ap.add_argument("--hard", action="store_true", help="also train on the Dawid-Skene argmax as hard labels")
    ap.add_argument("--eval-rounds", type=int, default=8,
                    help="passes over the held-out prompts (2 samples each) for the held-out pairs")
    ap.add_argument("--seed", type=int, default=0,
                    help="seeds the labelers, the A/B order and the reward models")
    args = ap.parse_args()

    from rlhfkit.config import RewardConfig
    from rlhfkit.data.loading import read_records, write_jsonl
    from rlhfkit.demo import sft_config, world_config
    from rlhfkit.feedback.aggregate import fit_pair_labels
    from rlhfkit.feedback.simulate import SimulatedLabeler, bayes_accuracy, make_preference_pairs
    from rlhfkit.scoring import RewardScorer
    from rlhfkit.synthetic.gold import gold_reward_fn
    from rlhfkit.synthetic.preferences import reward_vs_gold, sample_policy
    from rlhfkit.synthetic.world import build
    from rlhfkit.train.reward import train as reward_train
    from rlhfkit.train.sft import train as sft_train

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    world = build(world_config(out, quick=args.quick))
    sft_cfg = sft_config(world, out, quick=args.quick)
    sft_cfg.resume = True
    sft = sft_train(sft_cfg)
    pool_file = out / "pool.json"
    if pool_file.is_file():
        pool = json.loads(pool_file.read_text())
    else:
        train_prompts = [r["prompt"] for r in read_records(world / "prompts.jsonl")] * args.rounds
        samples = [[s for s in g if s.strip()]
                   for g in sample_policy(sft, train_prompts, samples_per_prompt=4, seed=1)]
        pool = {"train_prompts": train_prompts, "samples": samples}
        pool_file.write_text(json.dumps(pool))
    eval_file = out / f"eval_pool-{args.eval_rounds}.json"
    if eval_file.is_file():
        pool["eval"] = json.loads(eval_file.read_text())
    else:
        eval_prompts = [r["prompt"] for r in read_records(world / "prompts_eval.jsonl")] * args.eval_rounds
        held = sample_policy(sft, eval_prompts, samples_per_prompt=2, seed=2)
        keep = [i for i, s in enumerate(held) if all(x.strip() for x in s) and s[0] != s[1]]
        pool["eval"] = [[eval_prompts[i] for i in keep], [held[i][0] for i in keep],
                        [held[i][1] for i in keep]]
        eval_file.write_text(json.dumps(pool["eval"]))
    t_data = time.time() - t0

    # The pairs (drawn as reward_ceiling.py draws them), in a random A/B order, and five labels each.
    drawn = make_preference_pairs(pool["train_prompts"], pool["samples"], SimulatedLabeler(0.0),
                                  gold_reward_fn, rng_seed=3, pairs_per_prompt=3)
    rng = np.random.default_rng(4 + args.seed)
    P, A, B = [], [], []
    for r in drawn:
        a, b = (r["chosen"], r["rejected"]) if rng.random() < 0.5 else (r["rejected"], r["chosen"])
        P.append(r["prompt"])
        A.append(a)
        B.append(b)
    ga, gb = np.array(gold_reward_fn(P, A)), np.array(gold_reward_fn(P, B))
    labelers = [SimulatedLabeler(temperature=t, seed=10 + 100 * args.seed + k)
                for k, t in enumerate(args.temperatures)]
    says_a = np.stack([np.array([row["chosen"] == a for row, a in zip(lab.label(P, A, B, gold_reward_fn), A)])
                       for lab in labelers], axis=1)  # (n, L) True = labeler prefers A
    n_lab = len(labelers)
    majority_a = says_a.sum(axis=1) * 2 > n_lab  # odd crowd: no split votes
    items = {i: {k: ("A" if says_a[i, k] else "B") for k in range(n_lab)} for i in range(len(P))}
    post_a, table = fit_pair_labels(items, {k: f"T={t:g}#{k}" for k, t in enumerate(args.temperatures)})
    p_a = np.array([post_a[i] for i in range(len(P))])
    ds_a = p_a > 0.5
    decided = ga != gb
    gold_a = ga > gb

    def rows(choose_a: np.ndarray, confidence: np.ndarray | None) -> list[dict]:
        out_rows = []
        for i in range(len(P)):
            c, r = (A[i], B[i]) if choose_a[i] else (B[i], A[i])
            row = {"prompt": P[i], "chosen": c, "rejected": r}
            if confidence is not None:
                row["label_confidence"] = float(confidence[i])
            out_rows.append(row)
        return out_rows

    conf = np.maximum(p_a, 1 - p_a)
    datasets = {"majority": rows(majority_a, None), "dawid_skene": rows(ds_a, conf)}
    if args.hard:
        datasets["dawid_skene_hard"] = rows(ds_a, None)
    EP, EA, EB = pool["eval"]
    ega, egb = np.array(gold_reward_fn(EP, EA)), np.array(gold_reward_fn(EP, EB))
    best_t = min(args.temperatures)
    report = {
        "train_pairs": len(P), "temperatures": args.temperatures, "epochs": args.epochs, "seed": args.seed,
        "labels_vs_gold_train": {
            "majority": float(np.mean(majority_a[decided] == gold_a[decided])),
            "dawid_skene": float(np.mean(ds_a[decided] == gold_a[decided])),
            "best_single": float(max(np.mean(says_a[decided, k] == gold_a[decided]) for k in range(n_lab))),
        },
        "dawid_skene_estimated_vs_actual": [
            {"labeler": a["annotator"], "estimated": round(a["accuracy"], 3),
             "actual_vs_gold": round(float(np.mean(says_a[decided, a["annotator_id"]] == gold_a[decided])),
                                     3)}
            for a in table],
        "mean_label_confidence": float(conf.mean()),
        "heldout_pairs": int((ega != egb).sum()),
        "ceiling_bayes_optimal_aggregate": vote_accuracy(ega, egb, args.temperatures,
                                                         [1 / t for t in args.temperatures]),
        "ceiling_majority_vote": vote_accuracy(ega, egb, args.temperatures, [1.0] * n_lab),
        "ceiling_best_single_labeler": bayes_accuracy(ega[ega != egb], egb[ega != egb], best_t),
        "rm_accuracy_vs_gold": {}, "rm_seconds": {},
    }
    right: dict[str, np.ndarray] = {}
    for name, data_rows in datasets.items():
        t1 = time.time()
        data = write_jsonl(out / f"seed{args.seed}" / f"{name}.jsonl", data_rows)
        rm_dir = out / f"seed{args.seed}" / f"rm-{name}"
        rm = rm_dir / "final"
        if not (rm_dir / "summary.json").is_file():  # a rerun reuses the trained reward model
            rm = reward_train(RewardConfig(model=str(sft), data=str(data), output_dir=str(rm_dir),
                                           learning_rate=1e-3, per_device_batch_size=16,
                                           num_epochs=args.epochs, max_length=96, eval_fraction=0.05,
                                           log_every=50, warmup_ratio=0.05, seed=args.seed))
        res = reward_vs_gold(rm, EP, EA, EB, labeler_temperature=best_t)
        report["rm_accuracy_vs_gold"][name] = res["accuracy_vs_gold"]
        scorer = RewardScorer(rm, max_length=96)
        d = scorer.score(EP, EA)[0] - scorer.score(EP, EB)[0]
        right[name] = (np.sign(d) == np.sign(ega - egb))[ega != egb]
        report["rm_seconds"][name] = round(time.time() - t1, 1)
    # paired: the held-out pairs one reward model orders right and the other wrong
    report["discordant_pairs"] = {"dawid_skene_right_majority_wrong": int((right["dawid_skene"]
                                                                           & ~right["majority"]).sum()),
                                  "majority_right_dawid_skene_wrong": int((right["majority"]
                                                                           & ~right["dawid_skene"]).sum())}
    report.update(data_seconds=round(t_data, 1), total_seconds=round(time.time() - t0, 1))
    (out / f"label_aggregation-seed{args.seed}.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
