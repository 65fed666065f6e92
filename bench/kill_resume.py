"""The 20-kill version of tests/test_kill_resume.py (not a test): SIGKILL every stage at seeded
random points, resume, and compare with an uninterrupted run bitwise.

    python bench/kill_resume.py [--output runs/bench_kill_resume] [--kills-per-stage 4] [--steps 8]
        [--seed 0] [--stages sft,reward,dpo,ppo,grpo]

20 kills in total by default: 4 per stage x 5 stages (sft, reward, dpo, ppo = PPO with its
critic, grpo). Each stage's kills are drawn from the three kinds (a wall-clock delay, during a
checkpoint write, right after ``latest`` moved), every kind at least once per stage, then the
stage is resumed with ``resume=true`` until it finishes. Builds (or reuses) the quick synthetic
world in the test cache (``.rlhfkit-cache/``) and a quick SFT policy. Prints one line per stage
and a JSON total (kills, resumes, bitwise matches, metrics checks), also written to
``<output>/kill_resume.json``. Exit status 1 if any stage is not bitwise equal.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def prepare(out: Path) -> tuple[Path, Path]:
    """The quick world (shared with the test suite's cache, same key) and a quick SFT policy."""
    from rlhfkit.demo import sft_config
    from rlhfkit.testing.worldcache import cached_quick_world
    from rlhfkit.train.sft import train as sft_train

    world = cached_quick_world(Path(os.environ.get("RLHFKIT_TEST_CACHE", REPO / ".rlhfkit-cache")))
    sft = out / "policy" / "sft" / "final"  # apart from the sft stage's own runs in out/sft/
    if not (sft / "model.safetensors").is_file():
        scfg = sft_config(world, out / "policy", quick=True)
        scfg.eval_data, scfg.eval_fraction, scfg.save_every = None, 0.0, 0
        sft = Path(sft_train(scfg))
    return world, sft


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", default="runs/bench_kill_resume")
    ap.add_argument("--kills-per-stage", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stages", default="sft,reward,dpo,ppo,grpo")
    a = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from rlhfkit.testing.killharness import MODES, kill_and_resume, tiny_overrides, write_small_data

    out = Path(a.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    world, sft = prepare(out)
    data = write_small_data(world, out / "data")
    rng = random.Random(a.seed)
    results, t0 = [], time.time()
    for stage in a.stages.split(","):
        k = a.kills_per_stage  # every kind once (when k >= 3), the rest drawn at random
        modes = list(MODES)[:k] + [rng.choice(MODES) for _ in range(k - len(MODES))]
        rng.shuffle(modes)
        cli_stage, overrides = tiny_overrides(stage, world, sft, data, n_steps=a.steps)
        run_dir = out / stage / "run"
        for d in (run_dir, out / stage / "run-reference"):  # fresh runs each time
            if d.exists():
                shutil.rmtree(d)
        report = kill_and_resume(cli_stage, overrides, run_dir, n_steps=a.steps, modes=modes,
                                 seed=rng.randrange(2**31), label=stage)
        print(report.describe(), flush=True)
        landed = [i.mode for i in report.invocations if i.killed]
        results.append({"stage": stage, "modes": landed, "kills": report.kills, "resumes": report.resumes,
                        "bitwise_equal": report.bitwise_equal, "files_compared": len(report.compared),
                        "metrics_ok": not report.metrics_problems, "consistent": not report.consistency,
                        "mismatches": report.mismatches, "metrics_problems": report.metrics_problems})
    total = {"kills_planned": a.kills_per_stage * len(results), "kills": sum(r["kills"] for r in results),
             "resumes": sum(r["resumes"] for r in results),
             "bitwise_matches": sum(r["bitwise_equal"] for r in results), "stages": len(results),
             "metrics_ok": sum(r["metrics_ok"] for r in results),
             "kills_by_kind": {m: sum(r["modes"].count(m) for r in results) for m in MODES},
             "seconds": round(time.time() - t0, 1), "per_stage": results}
    (out / "kill_resume.json").write_text(json.dumps(total, indent=2) + "\n")
    print(json.dumps({k: v for k, v in total.items() if k != "per_stage"}))
    return 0 if total["bitwise_matches"] == len(results) and total["metrics_ok"] == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
