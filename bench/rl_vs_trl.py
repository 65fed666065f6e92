"""Online RL throughput: rlhfkit GRPO / RLOO / PPO vs TRL's ``GRPOTrainer`` / ``RLOOTrainer`` (not a test).

    python bench/rl_vs_trl.py [--output runs/bench] [--steps 20] [--rounds 3] [--prompts-per-step 8]
        [--samples 4] [--max-new-tokens 32] [--models tiny] [--threads 1] [--engine loop|hf]

Sides, each run in a fresh child process and alternated round by round so drift in machine load
hits all alike: ``ours_grpo`` vs ``trl_grpo``, ``ours_rloo`` vs ``trl_rloo``, and ``ours_ppo``
(PPO with a separate critic; TRL 1.16 has no PPO trainer outside ``trl.experimental``, so it is
reported against ``trl_grpo`` only as a reference point). Episodes/s counts sampled completions
(steps x prompts x samples) that were generated, scored and trained on, over the training loop
only (rlhfkit: bracketed by the stage's progress bar, so model loading, the step-0 evaluation and
the final checkpoint are excluded; TRL: ``train_runtime`` of ``Trainer.train``). Each run also
reports its mean completion length: episodes/s only compares like with like when the two
policies stop at similar lengths (the random ~20M model never stops, so both sample to the limit).

Matched on both sides: model weights (the quick world's SFT policy; optionally the random ~20M
Llama), prompt pool (``world/prompts.jsonl``), group size, prompts per step, max completion length,
temperature 0.7, no top-k/top-p, fp32 on CPU, torch threads, the gold reward, one optimizer step
per rollout batch (one epoch, one minibatch), a frozen reference with beta 0.05 -- GRPO: k3 term in
the loss (rlhfkit ``kl_in=loss``); RLOO: sequence KL subtracted from the reward (``kl_in=reward``,
TRL's RLOO) with no advantage whitening (TRL's ``normalize_advantages=False``) -- grad clip 1.0,
no gradient checkpointing (TRL's default is on: turned off), no evaluation, no checkpoints, no
logging backends. PPO uses the same budget (one epoch, one minibatch) plus its critic.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

LR, BETA, TEMPERATURE, SEED = 1e-5, 0.05, 0.7, 0
SIDES = ["ours_grpo", "trl_grpo", "ours_rloo", "trl_rloo", "ours_ppo"]


def _load_prompts(world: Path) -> list[str]:
    lines = (world / "prompts.jsonl").read_text().splitlines()
    return [json.loads(ln)["prompt"] for ln in lines if ln.strip()]


def run_ours(a: argparse.Namespace, tmp: Path) -> dict:
    import rlhfkit.train.ppo as stage
    from rlhfkit.config import PPOConfig

    estimator = a.worker.removeprefix("ours_")
    timer = C.LoopTimer(stage)
    world = Path(a.world)
    kl = {"grpo": dict(kl_in="loss"), "rloo": dict(kl_in="reward", whiten_advantages=False),
          "ppo": dict(kl_in="reward")}[estimator]
    cfg = PPOConfig(
        model=a.model_dir, data=str(world / "prompts.jsonl"), eval_fraction=0.0, output_dir=str(tmp / "ours"),
        estimator=estimator, num_samples=a.samples if estimator != "ppo" else None,
        reward_functions=["gold"], max_new_tokens=a.max_new_tokens, temperature=TEMPERATURE,
        # PPO has no groups: the same episodes per step come from prompts x samples distinct prompts.
        prompts_per_device=a.prompts_per_step * (a.samples if estimator == "ppo" else 1), max_steps=a.steps,
        # One epoch over one minibatch of all episodes = TRL's default (num_iterations=1, one
        # optimizer step per generation batch); rlhfkit's default 4 epochs x 4 minibatches would
        # do 16x the update work per rollout.
        ppo_epochs=1, mini_batch_size=a.prompts_per_step * a.samples,
        learning_rate=LR, warmup_ratio=0.0, lr_scheduler="linear", max_grad_norm=1.0, kl_coef=BETA, **kl,
        # TRL scores the raw reward; rlhfkit's no-EOS penalty would change the reward, not speed.
        no_eos_penalty=None,
        keep_best=False, save_every=0, eval_prompts=0, log_every=1, seed=SEED, rollout_engine=a.engine,
        mixed_precision=C.mixed_precision(a),
    )
    stage.train(cfg)
    rows = [json.loads(ln) for ln in (tmp / "ours" / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    lengths = [r["response_length"] for r in rows if "response_length" in r]
    return {"loop_s": timer.seconds,
            "mean_completion_tokens": statistics.fmean(lengths) if lengths else float("nan")}


def run_trl(a: argparse.Namespace, tmp: Path) -> dict:
    from datasets import Dataset
    from transformers import AutoTokenizer

    from rlhfkit.synthetic.gold import gold_reward_fn

    if a.worker == "trl_grpo":
        from trl import GRPOConfig as Config, GRPOTrainer as Trainer
        extra = {}
    else:
        from trl import RLOOConfig as Config, RLOOTrainer as Trainer
        extra = {"normalize_advantages": False}

    def gold(prompts, completions, **_):  # TRL passes extra dataset columns as kwargs
        return gold_reward_fn(prompts, completions)

    tok = AutoTokenizer.from_pretrained(a.model_dir)
    ds = Dataset.from_dict({"prompt": _load_prompts(Path(a.world))})
    n = a.prompts_per_step * a.samples
    args = Config(**C.trl_args(a, tmp, LR, SEED), num_generations=a.samples, per_device_train_batch_size=n,
                  generation_batch_size=n, max_completion_length=a.max_new_tokens, temperature=TEMPERATURE,
                  top_k=0, top_p=1.0, beta=BETA, num_iterations=1, disable_dropout=True,
                  log_completions=False, **extra)
    trainer = Trainer(model=a.model_dir, reward_funcs=gold, args=args, train_dataset=ds, processing_class=tok)
    out = trainer.train()
    key = "completions/mean_length"
    lengths = [h[key] for h in trainer.state.log_history if key in h]
    return {"loop_s": out.metrics["train_runtime"],
            "mean_completion_tokens": statistics.fmean(lengths) if lengths else float("nan")}




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    C.common_args(ap, steps=20)
    ap.set_defaults(models="tiny")
    ap.add_argument("--prompts-per-step", type=int, default=8)
    ap.add_argument("--samples", type=int, default=4, help="completions per prompt (group size)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--sides", default=",".join(SIDES), help="comma list of " + ", ".join(SIDES))
    ap.add_argument("--engine", default="loop", choices=["loop", "hf"], help="rlhfkit's rollout_engine")
    a = ap.parse_args()
    if a.worker:
        return C.serve_worker(a, run_ours, run_trl, "episodes_per_s",
                              a.steps * a.prompts_per_step * a.samples)

    out, world, dirs, peak = C.parent_setup(a)
    sides = a.sides.split(",")
    pairs = [(o, t)
             for o, t in (("ours_grpo", "trl_grpo"), ("ours_rloo", "trl_rloo"), ("ours_ppo", "trl_grpo"))
             if o in sides and t in sides]
    results = {}
    for name, mdir in dirs.items():
        steps = C.model_steps(a, name)
        args = ["--model-dir", str(mdir), "--world", str(world), "--steps", str(steps),
                "--prompts-per-step", str(a.prompts_per_step), "--samples", str(a.samples),
                "--max-new-tokens", str(a.max_new_tokens), "--engine", a.engine]
        runs = C.ab_runs(__file__, args, sides, a.rounds, a.threads, "episodes_per_s", f"rl {name}",
                         precision=a.precision)
        results[name] = {"model_dir": str(mdir), "steps": steps,
                         "episodes_per_run": steps * a.prompts_per_step * a.samples,
                         **C.summarise(runs, "episodes_per_s", pairs)}
    C.finish(out, "rl_vs_trl", a, results, {"prompts_per_step": a.prompts_per_step, "samples": a.samples,
                                            "max_new_tokens": a.max_new_tokens, "temperature": TEMPERATURE,
                                            "beta": BETA, "unit": "episodes/s", "engine": a.engine}, peak)


if __name__ == "__main__":
    main()
