"""GRPO rollout+update throughput: rlhfkit vs TRL's ``GRPOTrainer`` on the same tiny model (not a test).

    python bench/rl_vs_trl.py [--output runs/bench_rl_vs_trl] [--steps 30] [--rounds 3]
        [--prompts-per-step 8] [--samples 4] [--max-new-tokens 32] [--threads 1]

Builds (or reuses) the quick synthetic world and its SFT policy, then runs rlhfkit's GRPO
(``rlhfkit.train.ppo.train`` with ``estimator="grpo"``) and TRL's ``GRPOTrainer`` from that SFT
directory, alternating A B A B, each run in a fresh child process so neither inherits the
other's allocator state, thread pools or compiled kernels. Episodes/s counts sampled
completions (steps x prompts x samples) over the training loop only, model loading excluded
(rlhfkit: ``summary.json`` ``episodes_per_second``; TRL: ``train_runtime`` of ``Trainer.train``).
rlhfkit's timer also covers its end-of-run checkpoint (model + optimizer state), which TRL skips
with ``save_strategy="no"``: that bias is against rlhfkit. Prints one JSON line and writes
``<output>/rl_vs_trl.json``; the headline is ``ratio`` = median ours / median TRL. Each run also
reports its mean completion length, since episodes/s only compares like with like when the
two policies stop at similar lengths. Below ~30 steps a run lasts about a second and the
shared-machine noise swamps the difference.

Matched on both sides: SFT weights, prompt pool (``world/prompts.jsonl``), group size, prompts
per step, max completion length, temperature 0.7, no top-k/top-p, fp32 on CPU, torch threads,
gold reward, one optimizer step per rollout batch (one epoch, one minibatch), a frozen reference
model with beta 0.05 as a k3 loss term (TRL's form; rlhfkit ``kl_in="loss"``), grad clip 1.0,
no evaluation, no periodic checkpoints, no logging backends.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

LR, BETA, TEMPERATURE, SEED = 1e-5, 0.05, 0.7, 0


def _load_prompts(world: Path) -> list[str]:
    lines = (world / "prompts.jsonl").read_text().splitlines()
    return [json.loads(ln)["prompt"] for ln in lines if ln.strip()]


def _peak_rss_mb() -> float:
    # Each child reports its own peak, so the two sides never share a high-water mark.
    # ru_maxrss is KiB on Linux, bytes on macOS.
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(r / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def run_ours(a: argparse.Namespace, tmp: Path) -> dict:
    from rlhfkit.config import PPOConfig
    from rlhfkit.train.ppo import train

    world = Path(a.world)
    cfg = PPOConfig(
        model=a.sft, data=str(world / "prompts.jsonl"), eval_fraction=0.0, output_dir=str(tmp / "ours"),
        estimator="grpo", num_samples=a.samples, reward_functions=["gold"], max_new_tokens=a.max_new_tokens,
        temperature=TEMPERATURE, per_device_batch_size=a.prompts_per_step, max_steps=a.steps,
        # One epoch over one minibatch of all episodes = TRL's default (num_iterations=1, one
        # optimizer step per generation batch); rlhfkit's default 4 epochs x 4 minibatches would
        # do 16x the update work per rollout.
        ppo_epochs=1, mini_batch_size=a.prompts_per_step * a.samples,
        learning_rate=LR, warmup_ratio=0.0, lr_scheduler="linear", max_grad_norm=1.0,
        kl_coef=BETA, kl_in="loss",
        # TRL scores the raw reward; rlhfkit's no-EOS penalty would change the reward, not speed.
        no_eos_penalty=None,
        # No best/ or periodic saves (TRL saves nothing with save_strategy="no"); per-step logging
        # (TRL logs every step too) gives the completion lengths to compare.
        keep_best=False, save_every=0, eval_prompts=0, log_every=1, seed=SEED,
    )
    t0 = time.perf_counter()
    train(cfg)
    total = time.perf_counter() - t0
    summary = json.loads((tmp / "ours" / "summary.json").read_text())
    eps = summary["episodes_per_second"]
    n_eps = a.steps * a.prompts_per_step * a.samples
    rows = [json.loads(ln) for ln in (tmp / "ours" / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    lengths = [r["response_length"] for r in rows if "response_length" in r]
    return {"episodes_per_s": eps, "loop_s": n_eps / eps, "total_s": total,
            "mean_completion_tokens": statistics.fmean(lengths) if lengths else float("nan")}


def run_trl(a: argparse.Namespace, tmp: Path) -> dict:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from rlhfkit.synthetic.gold import gold_reward_fn

    def gold(prompts, completions, **_):  # TRL passes extra dataset columns as kwargs
        return gold_reward_fn(prompts, completions)

    tok = AutoTokenizer.from_pretrained(a.sft)
    ds = Dataset.from_dict({"prompt": _load_prompts(Path(a.world))})
    n = a.prompts_per_step * a.samples
    args = GRPOConfig(
        output_dir=str(tmp / "trl"), use_cpu=True, bf16=False, fp16=False,
        model_init_kwargs={"dtype": "float32"},
        num_generations=a.samples, per_device_train_batch_size=n, gradient_accumulation_steps=1,
        generation_batch_size=n, max_completion_length=a.max_new_tokens, temperature=TEMPERATURE,
        top_k=0, top_p=1.0, beta=BETA, num_iterations=1, learning_rate=LR, lr_scheduler_type="linear",
        warmup_steps=0, max_grad_norm=1.0, max_steps=a.steps, disable_dropout=True, seed=SEED,
        report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
        log_completions=False, dataloader_num_workers=0,
    )
    t0 = time.perf_counter()
    trainer = GRPOTrainer(model=a.sft, reward_funcs=gold, args=args, train_dataset=ds, processing_class=tok)
    out = trainer.train()
    total = time.perf_counter() - t0
    loop = out.metrics["train_runtime"]
    key = "completions/mean_length"
    lengths = [h[key] for h in trainer.state.log_history if key in h]
    return {"episodes_per_s": a.steps * n / loop, "loop_s": loop, "total_s": total,
            "mean_completion_tokens": statistics.fmean(lengths) if lengths else float("nan")}


def worker(a: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory(prefix=f"rl_vs_trl_{a.worker}_") as d:
        res = (run_ours if a.worker == "ours" else run_trl)(a, Path(d))
    res["peak_rss_mb"] = _peak_rss_mb()
    print("RESULT " + json.dumps(res), flush=True)


def prepare(out: Path) -> tuple[Path, Path]:
    from rlhfkit.demo import sft_config, world_config
    from rlhfkit.synthetic.world import build
    from rlhfkit.train.sft import train as sft_train

    world = build(world_config(out, quick=True))
    cfg = sft_config(world, out, quick=True)
    cfg.resume = True  # a rerun reuses the finished SFT run
    return world, Path(sft_train(cfg))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default="runs/bench_rl_vs_trl")
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps (= rollout batches) per run")
    ap.add_argument("--rounds", type=int, default=3, help="A B rounds; medians over rounds")
    ap.add_argument("--prompts-per-step", type=int, default=8)
    ap.add_argument("--samples", type=int, default=4, help="completions per prompt (group size)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in each run")
    ap.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--world", help=argparse.SUPPRESS)
    ap.add_argument("--sft", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a)

    import torch

    torch.set_num_threads(a.threads)
    out = Path(a.output)
    world, sft = prepare(out)
    if not (sft / "config.json").exists():
        raise SystemExit(f"no SFT model at {sft}")
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "MKL_NUM_THREADS": str(a.threads),
           "TOKENIZERS_PARALLELISM": "false"}
    base = [sys.executable, __file__, "--world", str(world), "--sft", str(sft), "--steps", str(a.steps),
            "--prompts-per-step", str(a.prompts_per_step), "--samples", str(a.samples),
            "--max-new-tokens", str(a.max_new_tokens), "--threads", str(a.threads)]
    runs: dict[str, list[dict]] = {"ours": [], "trl": []}
    for r in range(a.rounds):
        for side in ("ours", "trl"):  # alternate so drift in machine load hits both sides alike
            cmd = base + ["--worker", side]
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            line = next((ln for ln in reversed(p.stdout.splitlines()) if ln.startswith("RESULT ")), None)
            if p.returncode or line is None:
                sys.stderr.write(p.stdout[-4000:] + p.stderr[-4000:])
                raise SystemExit(f"{side} run {r} failed (rc {p.returncode})")
            res = json.loads(line[len("RESULT "):])
            runs[side].append(res)
            print(f"round {r} {side}: {res['episodes_per_s']:.2f} episodes/s", file=sys.stderr, flush=True)

    import transformers
    import trl

    med = {s: statistics.median(x["episodes_per_s"] for x in v) for s, v in runs.items()}
    result = {
        "bench": "rl_vs_trl", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "transformers": transformers.__version__,
                    "trl": trl.__version__},
        "setting": {"steps": a.steps, "prompts_per_step": a.prompts_per_step, "samples": a.samples,
                    "episodes_per_run": a.steps * a.prompts_per_step * a.samples,
                    "max_new_tokens": a.max_new_tokens, "temperature": TEMPERATURE, "beta": BETA,
                    "threads": a.threads, "rounds": a.rounds, "device": "cpu", "dtype": "float32",
                    "timer": "training loop; model loading excluded (rlhfkit: final checkpoint included)"},
        "ours_episodes_per_s": round(med["ours"], 3), "trl_episodes_per_s": round(med["trl"], 3),
        "ratio": round(med["ours"] / med["trl"], 3),
        "runs": {s: [{k: round(v, 3) for k, v in x.items()} for x in v] for s, v in runs.items()},
    }
    line = json.dumps(result)
    print(line)
    (out / "rl_vs_trl.json").write_text(line + "\n")


if __name__ == "__main__":
    main()
