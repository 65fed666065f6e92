"""Reward over-optimisation made visible (Gao et al. 2022), on the synthetic world.

PPO against a *learned* reward model with the KL penalty switched off and a long budget: the
proxy reward (the reward model's score) keeps rising while the gold reward peaks and then falls,
and the proxy-gold gap alarm flags it. An example, not a test:

    python examples/overoptimisation.py [--output runs/overopt] [--steps 60] [--full]

Steps: build (or reuse) the world, SFT, label pairs of SFT samples with a simulated labeler,
train a reward model, run PPO with kl_coef=0 and the gold reward monitored, then print the
proxy / gold / KL trajectory and where gold peaked, fit gold against d = sqrt(KL) in Gao et al.'s
RL form d (alpha - beta log d) and plot both (overoptimisation.png). Everything lands in run
directories under --output (metrics.jsonl of the PPO run holds the whole trajectory; best/ the
peak-gold policy).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default="runs/overopt")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--full", action="store_true", help="the demo-size world instead of the quick one")
    args = ap.parse_args()

    from rlhfkit.config import PPOConfig, RewardConfig
    from rlhfkit.demo import sft_config, world_config
    from rlhfkit.synthetic.preferences import preference_splits
    from rlhfkit.synthetic.world import build
    from rlhfkit.train.common import read_metrics
    from rlhfkit.train.ppo import train as ppo_train
    from rlhfkit.train.reward import train as rm_train
    from rlhfkit.train.sft import train as sft_train

    out, quick = Path(args.output), not args.full
    world = build(world_config(out, quick=quick))
    cfg = sft_config(world, out, quick=quick)
    cfg.resume = True
    sft = sft_train(cfg)
    prefs = preference_splits(sft, world, out / "prefs", labeler_temperature=0.3, seed=1)
    rm = rm_train(RewardConfig(model=str(sft), data=str(prefs["train"]), eval_data=str(prefs["eval"]),
                               output_dir=str(out / "rm"), learning_rate=1e-3, per_device_batch_size=16,
                               num_epochs=2, max_length=96, log_every=20, warmup_ratio=0.05, resume=True))
    run = out / "ppo_kl0"
    ppo_train(PPOConfig(
        model=str(sft), data=str(world / "prompts.jsonl"), eval_data=str(world / "prompts_eval.jsonl"),
        output_dir=str(run), reward_model=str(rm), kl_coef=0.0, gold="synthetic", gap_alarm_steps=3,
        gap_alarm="warn", learning_rate=5e-4, prompts_per_device=32, mini_batch_size=16, ppo_epochs=2,
        max_new_tokens=32, max_length=96, max_steps=args.steps, log_every=1, eval_prompts=0, resume=True))

    rows = [r for r in read_metrics(run) if "gold_reward" in r]
    print(f"{'step':>5}{'proxy':>9}{'gold':>9}{'gap':>8}{'seq KL':>9}  alarm")
    for r in rows:
        print(f"{r['step']:>5}{r['proxy_reward']:>9.3f}{r['gold_reward']:>9.3f}{r['proxy_gold_gap']:>8.3f}"
              f"{r['seq_kl']:>9.2f}  {'gap widening' if r.get('alarm_gap') else ''}")
    peak = max(rows, key=lambda r: r["gold_reward"])
    last = rows[-1]
    verdict = {
        "peak_gold_step": peak["step"], "peak_gold": peak["gold_reward"], "final_gold": last["gold_reward"],
        "proxy_at_peak": peak["proxy_reward"], "final_proxy": last["proxy_reward"],
        "final_seq_kl": last["seq_kl"],
        "gold_fell_after_peak": last["gold_reward"] < peak["gold_reward"],
        "proxy_kept_rising": last["proxy_reward"] > peak["proxy_reward"],
        "gap_alarms": sum(1 for r in rows if r.get("alarm_gap")),
    }
    verdict["gao_fit"] = gao_fit(rows, out / "overoptimisation.png")
    (out / "overoptimisation.json").write_text(json.dumps(verdict, indent=2))
    print(json.dumps(verdict))


def gao_fit(rows: list[dict], png: Path) -> dict:
    """Gold gain over the first step against d = sqrt(KL), fitted as d (alpha - beta log d), and a
    plot of gold and proxy gain with the fitted curve and its peak."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from rlhfkit.evaluate.metrics import gao_rl_fit

    kl = np.array([r["seq_kl"] for r in rows])
    gold = np.array([r["gold_reward"] for r in rows]) - rows[0]["gold_reward"]
    proxy = np.array([r["proxy_reward"] for r in rows]) - rows[0]["proxy_reward"]
    fit = gao_rl_fit(kl, gold)
    d = np.sqrt(np.clip(kl, 0, None))
    grid = np.linspace(max(d[d > 0].min(), 1e-3), d.max(), 200)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(d, gold, s=12, label="gold gain")
    ax.scatter(d, proxy, s=12, marker="x", label="proxy (RM) gain")
    ax.plot(grid, grid * (fit["alpha"] - fit["beta"] * np.log(grid)), "k-",
            label=f"fit d({fit['alpha']:.2f} - {fit['beta']:.2f} log d), R2 {fit['r2']:.2f}")
    if fit["d_peak"] is not None and fit["d_peak"] <= d.max() * 1.5:
        ax.axvline(fit["d_peak"], color="grey", ls="--", lw=1, label=f"gold peak d* = {fit['d_peak']:.2f}")
    ax.set_xlabel("d = sqrt(KL to SFT)")
    ax.set_ylabel("reward gain over step 1")
    ax.set_title("Reward over-optimisation (KL penalty 0)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    kl_peak = fit["kl_peak"] if fit["kl_peak"] is None else round(fit["kl_peak"], 2)
    print(f"Gao fit: alpha {fit['alpha']:.3f}, beta {fit['beta']:.3f}, R2 {fit['r2']:.2f}, "
          f"gold peaks at KL {kl_peak}; plot {png}")
    return fit


if __name__ == "__main__":
    main()
