"""Active selection of comparison pairs vs random selection: labels needed for a reward-model accuracy.

Issue 7's figure for `rlhf collect select=uncertain`. On the quick synthetic world:

1. world + SFT policy (built once, cached under --output); a pool of --pool-samples SFT samples per
   training prompt (all distinct pairs of a prompt are candidates), and held-out pairs (2 samples
   per held-out prompt, --eval-repeats times over) whose gold ordering is the yardstick;
2. a random seed set of --seed-labels pairs, labelled by a Bradley-Terry labeler on the gold reward
   (temperature --temperature), shared by both arms;
3. --rounds rounds per arm: add --batch labels, chosen either uniformly at random among the
   unlabelled candidate pairs, or as the --batch pairs of highest predictive entropy under the
   current reward model (the ensemble-mean P(A > B), `preference_entropy` of rlhfkit.feedback.collect,
   the same measure `rlhf collect` ranks by); retrain the reward model (an --ensemble-member
   ensemble, from the SFT weights) on all labels so far; record its accuracy against the gold
   ordering on the held-out pairs (ensemble mean);
4. both arms use the same labeler seed, seed set and training seeds; repeated over --seeds.

Reported: the mean accuracy curve of each arm, and the labels each needs to reach a target
accuracy (default: the random arm's final mean accuracy minus 1 point; linear interpolation between
measured label counts) -> "labels saved". One JSON line on stdout; active_selection.json and
active_selection.png under --output.

    python bench/active_selection.py [--output bench-runs/active] [--seeds 0 1] [--rounds 4]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np


def labels_to_reach(counts: list[int], acc: list[float], target: float) -> float | None:
    """First label count at which the curve reaches ``target`` (linear between measured points)."""
    for k, (n, a) in enumerate(zip(counts, acc)):
        if a >= target:
            if k == 0:
                return float(n)
            n0, a0 = counts[k - 1], acc[k - 1]
            return float(n0 + (n - n0) * (target - a0) / (a - a0))
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default="bench-runs/active")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--temperature", type=float, default=0.3, help="labeler Bradley-Terry temperature")
    ap.add_argument("--pool-samples", type=int, default=6, help="SFT samples per training prompt in the pool")
    ap.add_argument("--eval-repeats", type=int, default=20,
                    help="held-out prompts are sampled this many times")
    ap.add_argument("--seed-labels", type=int, default=100)
    ap.add_argument("--batch", type=int, default=100, help="labels added per round")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--ensemble", type=int, default=2, help="reward-model members (selection and evaluation)")
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--target-drop", type=float, default=0.01, help="target = random's final accuracy - this")
    ap.add_argument("--scope", choices=["prompt", "global"], default="prompt",
                    help="prompt: each round labels one pair in each of --batch random prompts (the same "
                         "prompts in every arm; what `rlhf collect` does); global: the --batch best pairs "
                         "of the whole pool")
    ap.add_argument("--arms", nargs="+", default=["random", "uncertain"],
                    choices=["random", "uncertain", "bald"],
                    help="'bald' (extra, not what collect does): the ensemble's mutual information "
                         "H(mean p) - mean H(p_m), member disagreement only, blind to pairs every "
                         "member finds close")
    args = ap.parse_args()
    if "random" not in args.arms:
        ap.error("--arms needs 'random': the target accuracy and the labels saved are measured against it")

    import torch

    torch.set_num_threads(1)
    from rlhfkit.config import RewardConfig
    from rlhfkit.data.loading import read_records, write_jsonl
    from rlhfkit.demo import sft_config, world_config
    from rlhfkit.feedback.collect import preference_entropy
    from rlhfkit.feedback.simulate import SimulatedLabeler
    from rlhfkit.scoring import RewardScorer
    from rlhfkit.synthetic.gold import gold_reward_fn
    from rlhfkit.synthetic.preferences import reward_vs_gold, sample_policy
    from rlhfkit.synthetic.world import build
    from rlhfkit.train.reward import train as reward_train
    from rlhfkit.train.sft import train as sft_train

    out = Path(args.output)
    t0 = time.time()
    world = build(world_config(out, quick=True))
    sft_cfg = sft_config(world, out, quick=True)
    sft_cfg.resume, sft_cfg.eval_every = True, 0
    sft = sft_train(sft_cfg)

    # The candidate pool: every distinct pair of a training prompt's samples.
    train_prompts = [r["prompt"] for r in read_records(world / "prompts.jsonl")]
    groups = sample_policy(sft, train_prompts, samples_per_prompt=args.pool_samples, seed=11)
    pool_p, pool_a, pool_b = [], [], []
    for p, g in zip(train_prompts, groups):
        distinct = list(dict.fromkeys(s for s in g if s.strip()))
        for i in range(len(distinct)):
            for j in range(i + 1, len(distinct)):
                pool_p.append(p)
                pool_a.append(distinct[i])
                pool_b.append(distinct[j])
    # Responses scored once per model; pairs index into them.
    resp_key = list(dict.fromkeys(zip(pool_p, pool_a)) | dict.fromkeys(zip(pool_p, pool_b)))
    resp_ix = {k: n for n, k in enumerate(resp_key)}
    ia = np.array([resp_ix[(p, a)] for p, a in zip(pool_p, pool_a)])
    ib = np.array([resp_ix[(p, b)] for p, b in zip(pool_p, pool_b)])
    prompt_ix = {p: n for n, p in enumerate(train_prompts)}
    pair_prompt = np.array([prompt_ix[p] for p in pool_p])  # (pairs,)
    gold_pool_a = np.array(gold_reward_fn(pool_p, pool_a))
    gold_pool_b = np.array(gold_reward_fn(pool_p, pool_b))

    eval_prompts = [r["prompt"] for r in read_records(world / "prompts_eval.jsonl")] * args.eval_repeats
    held = sample_policy(sft, eval_prompts, samples_per_prompt=2, seed=12)
    keep = [i for i, s in enumerate(held) if all(x.strip() for x in s) and s[0] != s[1]]
    EP, EA, EB = [eval_prompts[i] for i in keep], [held[i][0] for i in keep], [held[i][1] for i in keep]
    t_data = time.time() - t0

    def train_rm(rows: list[dict], where: Path, seed: int) -> Path:
        if where.exists():
            shutil.rmtree(where)
        data = write_jsonl(where.with_suffix(".jsonl"), rows)
        return reward_train(RewardConfig(
            model=str(sft), data=str(data), output_dir=str(where), learning_rate=1e-3,
            per_device_batch_size=16,
            num_epochs=args.epochs, max_length=96, eval_fraction=0.0, warmup_ratio=0.05, log_every=1000,
            save_every=0, normalize="none", ensemble=args.ensemble, seed=seed))

    def accuracy(rm: Path) -> float:
        return reward_vs_gold(rm, EP, EA, EB, labeler_temperature=args.temperature)["accuracy_vs_gold"]

    def label(labeler: SimulatedLabeler, idx: np.ndarray, rng: np.random.Generator) -> list[dict]:
        # A/B shown in random order, as collect does; the labeler sees gold through reward_fn.
        flip = rng.random(len(idx)) < 0.5
        A = [pool_b[i] if f else pool_a[i] for i, f in zip(idx, flip)]
        B = [pool_a[i] if f else pool_b[i] for i, f in zip(idx, flip)]
        return labeler.label([pool_p[i] for i in idx], A, B, gold_reward_fn)

    counts = [args.seed_labels + r * args.batch for r in range(args.rounds + 1)]
    runs = []
    for seed in args.seeds:
        rng0 = np.random.default_rng(seed)
        seed_idx = rng0.choice(len(pool_p), size=args.seed_labels, replace=False)
        base_labeler = SimulatedLabeler(args.temperature, seed=1000 + seed)
        seed_rows = label(base_labeler, seed_idx, np.random.default_rng(seed + 1))
        rm0 = train_rm(seed_rows, out / "rm" / f"s{seed}-seed", seed)
        acc0 = accuracy(rm0)
        run = {"seed": seed, "arms": {}}
        for arm in args.arms:
            # The same labeler state, A/B order stream and selection rng for both arms.
            labeler = SimulatedLabeler(args.temperature, seed=2000 + seed)
            order_rng, pick_rng = np.random.default_rng(seed + 2), np.random.default_rng(seed + 3)
            prompt_rng = np.random.default_rng(seed + 4)  # scope=prompt: the same prompts for every arm
            labelled = np.zeros(len(pool_p), dtype=bool)
            labelled[seed_idx] = True
            rows, rm, acc, sel_u, gold_gap = list(seed_rows), rm0, [acc0], [], []
            for r in range(1, args.rounds + 1):
                free = np.flatnonzero(~labelled)
                u = None
                if arm != "random":
                    scores = RewardScorer(rm, max_length=96).score_members(
                        [k[0] for k in resp_key], [k[1] for k in resp_key], batch_size=64)  # (M, R)
                    u = preference_entropy(scores[:, ia[free]], scores[:, ib[free]])  # (free,)
                    if arm == "bald":  # minus the members' own entropies: what they disagree on
                        u = u - np.mean([preference_entropy(scores[m, ia[free]], scores[m, ib[free]])
                                         for m in range(scores.shape[0])], axis=0)
                if args.scope == "global":
                    cand_groups = [np.arange(len(free))]
                    take = args.batch
                else:  # like `rlhf collect` with pairs_per_prompt=1: one pair in each of B prompts
                    open_prompts = np.unique(pair_prompt[free])
                    chosen = prompt_rng.choice(open_prompts, size=min(args.batch, len(open_prompts)),
                                               replace=False)
                    cand_groups = [np.flatnonzero(pair_prompt[free] == q) for q in chosen]
                    take = 1
                best = []
                for cand in cand_groups:  # positions in `free`
                    shuffled = cand[pick_rng.permutation(len(cand))]  # random order; ties stay random
                    if u is not None:
                        shuffled = shuffled[np.argsort(-np.round(u[shuffled], 12), kind="stable")]
                    best.extend(shuffled[:take].tolist())
                best = np.array(best)
                idx = free[best]
                if u is not None:
                    sel_u.append({"chosen": float(u[best].mean()), "all": float(u.mean())})
                labelled[idx] = True
                rows += label(labeler, idx, order_rng)
                gold_gap.append(float(np.abs(gold_pool_a[idx] - gold_pool_b[idx]).mean()))
                rm = train_rm(rows, out / "rm" / f"s{seed}-{arm}-r{r}", seed)
                acc.append(accuracy(rm))
                print(json.dumps({"seed": seed, "arm": arm, "labels": len(rows), "accuracy": acc[-1],
                                  "elapsed_s": round(time.time() - t0)}), flush=True)
            run["arms"][arm] = {"accuracy": acc, "mean_gold_gap_of_chosen": gold_gap, "entropy_bits": sel_u}
        runs.append(run)

    mean = {arm: np.mean([r["arms"][arm]["accuracy"] for r in runs], axis=0).tolist()
            for arm in args.arms}
    target = mean["random"][-1] - args.target_drop
    need = {arm: labels_to_reach(counts, mean[arm], target) for arm in mean}
    saved = {arm: None if need[arm] is None or need["random"] is None else need["random"] - need[arm]
             for arm in args.arms if arm != "random"}
    report = {
        "world": "quick", "scope": args.scope, "arms": args.arms, "pool_pairs": len(pool_p),
        "heldout_pairs": len(EP), "labeler_temperature": args.temperature,
        "seeds": args.seeds, "ensemble": args.ensemble, "label_counts": counts,
        "accuracy_mean": mean, "target_accuracy": target, "labels_to_target": need,
        "labels_saved": saved,
        "labels_saved_fraction": {a: None if v is None else v / need["random"] for a, v in saved.items()},
        "final_accuracy_diff_points": {a: 100 * (mean[a][-1] - mean["random"][-1]) for a in saved},
        "mean_gold_gap_of_chosen": {a: float(np.mean([r["arms"][a]["mean_gold_gap_of_chosen"] for r in runs]))
                                    for a in args.arms},
        "runs": runs, "data_seconds": round(t_data, 1), "total_seconds": round(time.time() - t0, 1),
    }
    (out / "active_selection.json").write_text(json.dumps(report, indent=2))
    _plot(counts, runs, mean, target, out / "active_selection.png")
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}))


def _plot(counts, runs, mean, target, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, color in zip(mean, ("tab:gray", "tab:blue", "tab:orange")):
        for r in runs:
            ax.plot(counts, r["arms"][arm]["accuracy"], color=color, alpha=0.25, lw=1)
        ax.plot(counts, mean[arm], color=color, lw=2, marker="o", label=f"{arm} (mean of {len(runs)} seeds)")
    ax.axhline(target, color="k", ls=":", lw=1, label="target")
    ax.set_xlabel("labels")
    ax.set_ylabel("RM accuracy vs gold (held-out pairs)")
    ax.set_title("Active (uncertain) vs random pair selection")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
