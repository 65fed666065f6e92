"""Where the time of an RL step goes (not a test): cProfile of a short `rlhf ppo` run per engine.

    python bench/rl_profile.py [--estimator grpo] [--engines hf loop] [--steps 10] [--threads 1]

Runs the bench's GRPO setting (bench/rl_vs_trl.py: the quick world's SFT policy, 8 prompts x 4
samples, 32 new tokens, one epoch of one minibatch, gold reward, beta 0.05) under cProfile and
reports, per engine, the seconds and share of the training loop spent in each phase: sampling
(the engine), the rollout's log-prob forward, the reference forward, scoring (gold), the update
(forward + backward + optimizer), and the rest. Prints one JSON line per engine.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

# phase -> (module file suffix, function name) whose cumulative time is the phase's
PHASES = {
    "sample": [("rl/engine.py", "sample"), ("rl/vllm_engine.py", "sample")],
    "rollout_logprobs": [("rl/rollout.py", "forward_logprobs")],
    "reference": [("train/ppo.py", "_ref_logprobs")],
    "score": [("rl/rollout.py", "score_rollout")],
    "update": [("train/ppo.py", "_update")],
    "advantages": [("train/ppo.py", "_advantages")],
}


def _cumulative(stats: pstats.Stats, targets: list[tuple[str, str]]) -> float:
    total = 0.0
    for (file, _, func), (_, _, _, ct, _) in stats.stats.items():
        if any(file.endswith(suffix) and func == name for suffix, name in targets):
            total += ct
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--estimator", default="grpo", choices=["grpo", "rloo", "ppo"])
    ap.add_argument("--engines", nargs="+", default=["hf", "loop"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--output", default="runs/bench")
    a = ap.parse_args()

    import torch

    import rlhfkit.train.ppo as stage
    from rlhfkit.config import PPOConfig

    torch.set_num_threads(a.threads)
    world, sft, _ = C.fixtures(Path(a.output), "tiny")
    kl = {"grpo": dict(kl_in="loss"), "rloo": dict(kl_in="reward", whiten_advantages=False),
          "ppo": dict(kl_in="reward")}[a.estimator]
    for engine in a.engines:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = PPOConfig(
                model=str(sft), data=str(world / "prompts.jsonl"), eval_fraction=0.0, output_dir=tmp,
                estimator=a.estimator, num_samples=4 if a.estimator != "ppo" else None,
                reward_functions=["gold"], max_new_tokens=32, temperature=0.7,
                prompts_per_device=8 * (4 if a.estimator == "ppo" else 1), max_steps=a.steps, ppo_epochs=1,
                mini_batch_size=32, learning_rate=1e-5, warmup_ratio=0.0, max_grad_norm=1.0, kl_coef=0.05,
                no_eos_penalty=None, keep_best=False, save_every=0, eval_prompts=0, log_every=1, seed=0,
                rollout_engine=engine, **kl)
            timer = C.LoopTimer(stage)
            prof = cProfile.Profile()
            prof.enable()
            stage.train(cfg)
            prof.disable()
        stats = pstats.Stats(prof)
        phases = {name: _cumulative(stats, targets) for name, targets in PHASES.items()}
        # forward_logprobs also runs inside _ref_logprobs: keep only the rollout's own calls
        phases["rollout_logprobs"] = max(phases["rollout_logprobs"] - phases["reference"], 0.0)
        loop = timer.seconds
        phases["other"] = max(loop - sum(phases.values()), 0.0)
        print(json.dumps({"engine": engine, "estimator": a.estimator, "steps": a.steps,
                          "loop_s": round(loop, 2), "episodes_per_s": round(a.steps * 32 / loop, 1),
                          "seconds": {k: round(v, 2) for k, v in phases.items()},
                          "share": {k: round(v / loop, 3) for k, v in phases.items()}}), flush=True)


if __name__ == "__main__":
    main()
