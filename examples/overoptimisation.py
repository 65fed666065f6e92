"""Reward over-optimisation made visible (Gao et al. 2022), on the synthetic world.

PPO against a *learned* reward model, with a long budget and several KL coefficients: the proxy
reward (the reward model's score) keeps rising, while the gold reward first rises (the reward
model is good enough to be worth optimising) and then falls as the policy finds the reward
model's mistakes; the proxy-gold gap alarm flags it. An example, not a test:

    python examples/overoptimisation.py [--output runs/overopt] [--steps 60] [--kl 0,0.02,0.05] [--full]

Steps: build (or reuse) the world, SFT, label pairs of SFT samples with a simulated labeler
(8 samples and 12 pairs per prompt, temperature 0.1: with fewer pairs the reward model learns
sentiment but not the substance the gold values, and the gold falls from the first step -- there is
nothing worth optimising), train a reward model, then one PPO run per KL coefficient with the gold
reward monitored. Every ``--eval-every`` steps each run samples held-out prompts and measures proxy,
gold and the sequence KL to SFT there (the points Gao et al. fit; the per-step training-batch
numbers are printed too but are too noisy to fit). For each run it prints the trajectory, the step
and KL where held-out gold peaked, and fits gold gain against d = sqrt(KL) in Gao et al.'s RL form
d (alpha - beta log d); one plot holds every run (overoptimisation.png) and overoptimisation.json
the numbers. Every run directory is resumable (metrics.jsonl of each PPO run holds its whole
trajectory; best/ its peak-gold policy).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default="runs/overopt")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--kl", type=_floats, default=[0.0, 0.02, 0.05], help="KL coefficients, one run each")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--eval-every", type=int, default=4, help="steps between held-out evaluations")
    ap.add_argument("--full", action="store_true", help="the demo-size world instead of the quick one")
    args = ap.parse_args()

    from rlhfkit.config import PPOConfig, RewardConfig
    from rlhfkit.demo import PAIRS_PER_PROMPT, SAMPLES_PER_PROMPT, sft_config, world_config
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
    prefs = preference_splits(sft, world, out / "prefs", samples_per_prompt=SAMPLES_PER_PROMPT,
                              pairs_per_prompt=PAIRS_PER_PROMPT,
                              labeler_temperature=0.1, seed=1)
    rm = rm_train(RewardConfig(model=str(sft), data=str(prefs["train"]), eval_data=str(prefs["eval"]),
                               output_dir=str(out / "rm"), learning_rate=1e-3, per_device_batch_size=16,
                               num_epochs=2, max_length=96, log_every=20, warmup_ratio=0.05, resume=True))
    verdicts = {}
    for coef in args.kl:
        run = out / f"ppo_kl{coef:g}"
        ppo_train(PPOConfig(
            model=str(sft), data=str(world / "prompts.jsonl"), output_dir=str(run), reward_model=str(rm),
            kl_coef=coef, gold="synthetic", gap_alarm_steps=3, gap_alarm="warn", collapse_alarm="warn",
            learning_rate=args.lr, prompts_per_device=32, mini_batch_size=16, ppo_epochs=2,
            max_new_tokens=32, max_length=96, max_steps=args.steps, log_every=1, eval_prompts=64,
            eval_every=args.eval_every, eval_num_samples=4, resume=True))
        rows = read_metrics(run)
        print(f"\nKL coefficient {coef:g} (training batch each step; held-out at the evaluation steps)")
        print(f"{'step':>5}{'proxy':>9}{'gold':>9}{'gap':>8}{'seq KL':>9}{'eval gold':>10}{'eval KL':>9}"
              "  alarm")
        for r in rows:
            if "gold_reward" not in r:
                continue
            alarm = " ".join(k[6:] for k in ("alarm_gap", "alarm_collapse") if r.get(k))
            ev = f"{r['eval_gold']:>10.3f}{r['eval_seq_kl']:>9.2f}" if "eval_gold" in r else " " * 19
            print(f"{r['step']:>5}{r['proxy_reward']:>9.3f}{r['gold_reward']:>9.3f}{r['proxy_gold_gap']:>8.3f}"
                  f"{r['seq_kl']:>9.2f}{ev}  {alarm}")
        verdicts[f"{coef:g}"] = trajectory_verdict(eval_points(rows), rows)
    verdicts_fit = gao_fit({k: eval_points(read_metrics(out / f"ppo_kl{k}")) for k in verdicts},
                           out / "overoptimisation.png")
    for k, fit in verdicts_fit.items():
        verdicts[k]["gao_fit"] = fit
    (out / "overoptimisation.json").write_text(json.dumps(verdicts, indent=2))
    print()
    print(f"{'KL coef':>8}{'gold start':>11}{'peak':>8}{'rise':>7}{'at KL':>7}{'final':>8}"
          f"{'alpha':>8}{'beta':>7}{'R2':>6}{'fit peak KL':>12}")
    for k, v in verdicts.items():
        f = v["gao_fit"]
        peak_kl = "-" if f["kl_peak"] is None else f"{f['kl_peak']:.2f}"
        print(f"{k:>8}{v['start_gold']:>11.3f}{v['peak_gold']:>8.3f}{v['gold_rise']:>7.3f}{v['kl_at_peak']:>7.2f}"
              f"{v['final_gold']:>8.3f}{f['alpha']:>8.3f}{f['beta']:>7.3f}{f['r2']:>6.2f}{peak_kl:>12}")


def eval_points(rows: list[dict]) -> list[dict]:
    """The held-out evaluations of one run (step 0 = the SFT policy, KL 0), as
    {step, gold_reward, proxy_reward, seq_kl}."""
    return [{"step": r["step"], "gold_reward": r["eval_gold"], "proxy_reward": r["eval_proxy"],
             "seq_kl": r["eval_seq_kl"]} for r in rows if "eval_gold" in r]


def trajectory_verdict(points: list[dict], rows: list[dict]) -> dict:
    """Where held-out gold peaked on one run, how much it rose before, and whether it fell after
    (``points``: :func:`eval_points`; ``rows``: every metrics row, for the alarms)."""
    peak = max(points, key=lambda r: r["gold_reward"])
    first, last = points[0], points[-1]
    return {
        "start_gold": first["gold_reward"], "peak_gold_step": peak["step"], "peak_gold": peak["gold_reward"],
        "gold_rise": peak["gold_reward"] - first["gold_reward"], "kl_at_peak": peak["seq_kl"],
        "final_gold": last["gold_reward"], "gold_fall_after_peak": peak["gold_reward"] - last["gold_reward"],
        "proxy_at_peak": peak["proxy_reward"], "final_proxy": last["proxy_reward"],
        "final_seq_kl": last["seq_kl"], "proxy_kept_rising": last["proxy_reward"] > peak["proxy_reward"],
        "gap_alarms": sum(1 for r in rows if r.get("alarm_gap")),
        "collapse_alarms": sum(1 for r in rows if r.get("alarm_collapse")),
    }


def gao_fit(runs: dict[str, list[dict]], png: Path) -> dict[str, dict]:
    """Per run: held-out gold gain over the SFT policy against d = sqrt(KL), fitted as
    d (alpha - beta log d); one plot with every run's gold gain (points), its fit (line) and its proxy
    gain (crosses)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from rlhfkit.evaluate.metrics import gao_rl_fit

    fits = {}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, rows in runs.items():
        kl = np.array([r["seq_kl"] for r in rows])
        gold = np.array([r["gold_reward"] for r in rows]) - rows[0]["gold_reward"]
        proxy = np.array([r["proxy_reward"] for r in rows]) - rows[0]["proxy_reward"]
        fit = fits[name] = gao_rl_fit(kl, gold)
        d = np.sqrt(np.clip(kl, 0, None))
        grid = np.linspace(max(d[d > 0].min(), 1e-3), d.max(), 200)
        pts = ax.scatter(d, gold, s=10, label=f"gold gain, KL coef {name}")
        ax.scatter(d, proxy, s=10, marker="x", color=pts.get_facecolor()[0], alpha=0.5)
        ax.plot(grid, grid * (fit["alpha"] - fit["beta"] * np.log(grid)), "-", color=pts.get_facecolor()[0],
                label=f"fit d({fit['alpha']:.2f} - {fit['beta']:.2f} log d), R2 {fit['r2']:.2f}")
        kl_peak = "-" if fit["kl_peak"] is None else f"{fit['kl_peak']:.2f}"
        print(f"KL coef {name}: Gao fit alpha {fit['alpha']:.3f}, beta {fit['beta']:.3f}, "
              f"R2 {fit['r2']:.2f}, gold peaks at KL {kl_peak}")
    ax.set_xlabel("d = sqrt(KL to SFT)")
    ax.set_ylabel("held-out reward gain over SFT (x: proxy)")
    ax.set_title("Reward over-optimisation: gold rises, then falls")
    ax.axhline(0, color="grey", lw=0.5)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    print(f"plot: {png}")
    return fits


if __name__ == "__main__":
    main()
