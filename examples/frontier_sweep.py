"""The reward-vs-KL frontier of DPO and PPO on the synthetic world (the shape of the DPO paper's Figure 2).

Rafailov et al. (2023, Figure 2 left) plot, for many runs of each method, the gold reward a policy reaches
against its KL to the reference policy: the better method reaches more reward for the same KL. This
example sweeps DPO's beta and PPO's KL coefficient on one synthetic world, from one SFT model, one set of
simulated-labeler preferences and one reward model, and measures every final policy the same way:

    python examples/frontier_sweep.py [--output runs/frontier] [--full]
                                      [--dpo-betas 0.03,0.1,0.3,1] [--ppo-kl 0.05,0.1,0.4,1]

1. Build (or reuse) the world and SFT model (the demo's settings; --full for the demo-size world).
2. Sample 8 completions per prompt from the SFT model, label 12 pairs of them per prompt with a
   simulated labeler (Bradley-Terry on the gold, temperature 0.1), train a reward model on them (the
   demo's collection: fewer pairs give a reward model that learns sentiment but not substance).
3. DPO from SFT on the same pairs, once per beta (lr 2e-4, 320 steps, as the demo); PPO from SFT
   against the reward model, once per KL coefficient (32 steps, as the demo; every other setting fixed).
4. Evaluate SFT and every policy on the same held-out prompts with the same seed (`evaluate_policies`:
   gold mean, gold win rate vs SFT, sequence KL to SFT at temperature 1, distinct-2, health verdict).
5. Write frontier.json (one point per run, sorted by KL within each method) and frontier.png (gold
   against KL, DPO and PPO in one plot, each point labelled with its beta / coefficient).

Every run directory is resumable: re-running the script skips what is finished. On 2 CPU cores the quick
world takes about 6 minutes for the default 8 runs, which is why this is an example and not part of
`rlhf demo`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default="runs/frontier")
    ap.add_argument("--full", action="store_true", help="the demo-size world instead of the quick one")
    ap.add_argument("--dpo-betas", type=_floats, default=[0.03, 0.1, 0.3, 1.0])
    ap.add_argument("--ppo-kl", type=_floats, default=[0.05, 0.1, 0.4, 1.0])
    ap.add_argument("--eval-prompts", type=int, default=100)
    args = ap.parse_args()

    from rlhfkit.config import DPOConfig, PPOConfig, RewardConfig
    from rlhfkit.demo import PAIRS_PER_PROMPT, SAMPLES_PER_PROMPT, sft_config, world_config
    from rlhfkit.evaluate.policies import evaluate_policies, read_prompts
    from rlhfkit.synthetic.preferences import preference_splits
    from rlhfkit.synthetic.world import build
    from rlhfkit.train.dpo import train as dpo_train
    from rlhfkit.train.ppo import train as ppo_train
    from rlhfkit.train.reward import train as rm_train
    from rlhfkit.train.sft import train as sft_train

    out, quick = Path(args.output), not args.full
    world = build(world_config(out, quick=quick))
    cfg = sft_config(world, out, quick=quick)
    cfg.resume = True
    sft = sft_train(cfg)
    prefs = preference_splits(sft, world, out / "prefs", samples_per_prompt=SAMPLES_PER_PROMPT,
                              pairs_per_prompt=PAIRS_PER_PROMPT,
                              labeler_temperature=0.1, seed=1)
    rm = rm_train(RewardConfig(model=str(sft), data=str(prefs["train"]), eval_data=str(prefs["eval"]),
                               output_dir=str(out / "rm"), learning_rate=1e-3, per_device_batch_size=16,
                               num_epochs=2, max_length=96, log_every=20, warmup_ratio=0.05, resume=True))

    policies: dict[str, str] = {"sft": str(sft)}
    settings: dict[str, dict] = {}
    for beta in args.dpo_betas:
        name = f"dpo_beta{beta:g}"
        policies[name] = str(dpo_train(DPOConfig(
            model=str(sft), data=str(prefs["train"]), output_dir=str(out / name), beta=beta,
            learning_rate=2e-4, per_device_batch_size=16, max_steps=320, max_length=96, warmup_ratio=0.1,
            log_every=20, resume=True)))
        settings[name] = {"method": "DPO", "beta": beta}
    for coef in args.ppo_kl:
        name = f"ppo_kl{coef:g}"
        policies[name] = str(ppo_train(PPOConfig(
            model=str(sft), data=str(world / "prompts.jsonl"), output_dir=str(out / name),
            reward_model=str(rm), kl_coef=coef, learning_rate=5e-4, prompts_per_device=32,
            mini_batch_size=16, ppo_epochs=2, max_new_tokens=32, max_length=96, max_steps=32, log_every=4,
            eval_prompts=0, keep_best=False, resume=True)))
        settings[name] = {"method": "PPO", "kl_coef": coef}

    prompts = read_prompts(world / "prompts_eval.jsonl", limit=args.eval_prompts)
    ev = evaluate_policies(policies, prompts, reference="sft", reward_model=str(rm), gold="synthetic",
                           num_samples=2, max_new_tokens=48)
    points = []
    for name, s in settings.items():
        m = ev["policies"][name]
        points.append({"run": name, **s, "kl": m["kl"], "gold": m["gold_mean"], "win_rate": m["win_rate"],
                       "distinct_2": m["distinct_2"], "verdict": m["health"]["verdict"]})
    points.sort(key=lambda p: (p["method"], p["kl"]))
    ref = ev["policies"]["sft"]
    result = {"sft": {"gold": ref["gold_mean"], "distinct_2": ref["distinct_2"]}, "points": points}
    (out / "frontier.json").write_text(json.dumps(result, indent=2))
    plot(result, out / "frontier.png")

    print(f"SFT gold {ref['gold_mean']:.3f}, distinct-2 {ref['distinct_2']:.3f}")
    print(f"{'run':<14}{'KL(SFT)':>9}{'gold':>8}{'win':>7}{'dist-2':>8}  verdict")
    for p in points:
        print(f"{p['run']:<14}{p['kl']:>9.2f}{p['gold']:>8.3f}{100 * p['win_rate']:>6.0f}%"
              f"{p['distinct_2']:>8.3f}  {p['verdict']}")
    print(f"plot: {out / 'frontier.png'}")


def plot(result: dict, png: Path) -> None:
    """Gold reward against KL to SFT, one line per method through its points sorted by KL."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.axhline(result["sft"]["gold"], color="grey", ls=":", lw=1, label="SFT")
    for method, marker in (("DPO", "o"), ("PPO", "s")):
        pts = [p for p in result["points"] if p["method"] == method]
        if not pts:
            continue
        line, = ax.plot([p["kl"] for p in pts], [p["gold"] for p in pts], marker=marker, label=method)
        for p in pts:
            knob = f"β={p['beta']:g}" if method == "DPO" else f"kl={p['kl_coef']:g}"
            ax.annotate(knob, (p["kl"], p["gold"]), textcoords="offset points", xytext=(4, 4), fontsize=7,
                        color=line.get_color())
    ax.set_xlabel("sequence KL to SFT (nats)")
    ax.set_ylabel("gold reward (held-out prompts)")
    ax.set_title("Reward vs KL frontier: DPO beta sweep, PPO KL-coefficient sweep")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
