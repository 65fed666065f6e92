"""Run every rlhfkit-vs-TRL benchmark in turn (not a test).

    python bench/run_all.py [--output runs/bench] [--rounds 3] [--threads 1] [--only sft,reward,dpo,rl]
        [--precision fp32|bf16] [--padding-free] [--engine loop|hf]

Each benchmark runs as its own script (``python bench/<name>_vs_trl.py`` runs one alone, with
more options) and writes ``<output>/<name>_vs_trl.json``; this prints their JSON lines and writes
``<output>/all.json`` with the headline ratios. The default budgets (tiny model: 60 SFT steps --
the quick world's 1080 SFT rows, each trained once --, 120 reward/DPO steps, 30 RL steps; ~20M
model: 6 steps; RL on the tiny model only) took 12.5 minutes on the idle 2-core CPU
(docs/benchmarks.md); the world, the SFT policy and the ~20M model are built on the first run
(a few more minutes) and reused afterwards.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Tiny-model loops of ~1 s (30 steps) were dominated by jitter (one reward run at 0.77x of its
# neighbours); 100-120 steps give loops of 4-10 s.
BENCHES = {
    "sft": ["--steps", "60", "--steps-20m", "6"],
    "reward": ["--steps", "120", "--steps-20m", "6"],
    "dpo": ["--steps", "120", "--steps-20m", "6"],
    "rl": ["--steps", "30"],
}


def headline(name: str, res: dict) -> dict:
    """model -> {pair: {throughput ratio, rss ratio}} plus MFU, for the summary."""
    return {m: {"ratios": r["ratios"], **({"mfu": r["mfu"]} if "mfu" in r else {}), "median": r["median"]}
            for m, r in res["models"].items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default="runs/bench")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default=",".join(BENCHES), help="comma list of " + ", ".join(BENCHES))
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="both sides of every benchmark (summary in all_bf16.json for bf16)")
    ap.add_argument("--padding-free", action="store_true",
                    help="rlhfkit's sft / reward / dpo with padding_free on (see each script; summary in "
                         "all_padding_free.json)")
    ap.add_argument("--engine", default="loop", choices=["loop", "hf"], help="rlhfkit's RL rollout_engine")
    a = ap.parse_args()
    summary, t0 = {}, time.time()
    for name in a.only.split(","):
        if name not in BENCHES:
            raise SystemExit(f"--only: unknown benchmark {name!r} ({', '.join(BENCHES)})")
        cmd = [sys.executable, str(HERE / f"{name}_vs_trl.py"), "--output", a.output,
               "--rounds", str(a.rounds), "--threads", str(a.threads), "--precision", a.precision,
               *BENCHES[name]]
        if a.padding_free and name != "rl":
            cmd.append("--padding-free")
        if name == "rl":
            cmd += ["--engine", a.engine]
        print(f"== {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
        if p.returncode:
            raise SystemExit(f"{name} failed (rc {p.returncode})")
        line = p.stdout.strip().splitlines()[-1]
        print(line, flush=True)
        summary[name] = headline(name, json.loads(line))
    path = Path(a.output) / ("all.json" if a.precision == "fp32" else f"all_{a.precision}.json")
    path.write_text(json.dumps({"seconds": round(time.time() - t0), "rounds": a.rounds, "threads": a.threads,
                                "precision": a.precision, "benches": summary}, indent=1) + "\n")
    print(f"all benchmarks: {time.time() - t0:.0f} s; summary in {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
