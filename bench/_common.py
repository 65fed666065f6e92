"""Shared machinery of the ``bench/*_vs_trl.py`` scripts (not a test, not part of the package).

Every comparison follows one structure:

* the parent process builds (or reuses) the quick synthetic world, its SFT policy, a ~20M-param
  Llama with the world's tokenizer, and the synthetic preference pairs, all cached under the
  output directory so a rerun only measures;
* it measures this machine's fp32 matmul peak (``torch.mm`` of square fp32 matrices, best of
  several, same thread count) in the same run, before and after the A/B runs (the larger wins,
  so a busy moment cannot inflate MFU);
* it runs each side in a fresh child process (``--worker SIDE``), alternating A B A B so drift
  in machine load hits both sides alike; every child reports its own throughput, loop time and
  peak RSS (``VmHWM`` of the child's own address space: see `peak_rss_mb`);
* ``--precision`` sets both sides alike: fp32, or bf16 (fp32 weights and optimizer, bf16-autocast
  forwards: rlhfkit ``mixed_precision=bf16``, TRL ``bf16=True``); a bf16 result is written to
  ``<bench>_bf16.json`` next to the fp32 one;
* medians over rounds, the ratio ours / TRL, the RSS ratio and the MFU go into one JSON line on
  stdout and ``<output>/<bench>.json``.

Timers cover the training loop only. For rlhfkit the loop is bracketed by the stage's progress
bar (created right before the first step, closed right after the last one; the patched
``progress`` records both instants), which leaves out model loading, tokenisation, the step-0
evaluation and the final checkpoint; for TRL it is ``train_runtime`` of ``Trainer.train()``.
Anything rlhfkit does *before* the loop that belongs to the training work (the DPO reference
pass of ``precompute_ref_logprobs``) is timed separately and added back.

MFU: training FLOPs = 6 x N x tokens (forward 2N + backward 4N per token), N = the parameters
that take part in matmuls, i.e. all parameters except the input embedding table (a lookup), the
LM head / score head included; attention's own T^2 term is left out (T <= 128 here, under 2% of
the count). Tokens are the non-pad tokens of the sequences trained on. MFU = (FLOPs / loop
seconds) / measured peak.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Callable

DEFAULT_OUTPUT = "runs/bench"
# The ~20M-parameter Llama: 8 layers of width 384 (MLP 1536) over the world's 1024-token vocab:
# 8 x (4 x 384^2 + 3 x 384 x 1536) = 18.9M in the blocks, 0.4M in the LM head, 0.4M embedding.
LLAMA20M = dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=6,
                num_key_value_heads=6, max_position_embeddings=256, tie_word_embeddings=False)


# ----------------------------------------------------------------------------- child side


def peak_rss_mb() -> float:
    """This process's own peak resident set, in MB.

    Not ``getrusage(RUSAGE_SELF).ru_maxrss``: Linux keeps that high-water mark in the process's
    signal struct, and exec folds the old address space's peak into it -- after fork, a copy of the
    parent's -- so a child started by a parent holding torch and the world reports the parent's peak
    (a child that really peaks at 13 MB reported 613 MB under a 600 MB parent). ``VmHWM`` in
    /proc/self/status is per address space, which exec replaces: the child's own peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)  # kB
    except OSError:
        pass
    # No procfs (macOS): ru_maxrss, in bytes there, may include the parent's peak as explained above.
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(r / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


class LoopTimer:
    """Patch ``module.progress`` so the stage's own progress bar brackets the timed loop.

    The bar is created right before the first training step and closed right after the last one
    in every rlhfkit stage, so (close - create) is the loop alone. The patched bar is the real
    one (disabled output is unchanged); only two timestamps are added."""

    def __init__(self, module):
        self.start = self.end = None
        real = module.progress

        def progress(*args, **kwargs):
            bar = real(*args, **kwargs)
            close = bar.close

            def timed_close():
                if self.end is None:
                    self.end = time.perf_counter()
                close()

            bar.close = timed_close
            self.start = time.perf_counter()
            return bar

        module.progress = progress

    @property
    def seconds(self) -> float:
        if self.start is None or self.end is None:
            raise RuntimeError("the training loop was never bracketed by the progress bar")
        return self.end - self.start


def timed(module, name: str) -> list[float]:
    """Wrap ``module.name`` so each call's wall time is appended to the returned list."""
    spent: list[float] = []
    fn = getattr(module, name)

    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - t)

    setattr(module, name, wrapper)
    return spent


def read_rows(path: str | Path) -> list[dict]:
    """The rows of a JSONL file (blank lines skipped)."""
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]


def mixed_precision(a: argparse.Namespace) -> str:
    """rlhfkit's ``mixed_precision`` for ``--precision``."""
    return {"fp32": "no", "bf16": "bf16"}[a.precision]


def trl_args(a: argparse.Namespace, tmp: Path, lr: float, seed: int) -> dict:
    """TrainingArguments every TRL side shares: the work rlhfkit's side is configured to match
    (fp32 weights on CPU, bf16 autocast with ``--precision bf16``, ``a.steps`` steps, no
    accumulation, AdamW linear without warmup, clip 1.0, no gradient checkpointing -- TRL 1.16
    defaults it on --, no eval / saving / logging backend). transformers accepts bf16 on a CPU
    only with ``use_cpu``."""
    return dict(output_dir=str(tmp / "trl"), use_cpu=True, bf16=a.precision == "bf16", fp16=False,
                model_init_kwargs={"dtype": "float32"}, gradient_checkpointing=False,
                gradient_accumulation_steps=1, max_steps=a.steps, learning_rate=lr,
                lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0, seed=seed, report_to="none",
                save_strategy="no",
                logging_steps=1, disable_tqdm=True, dataloader_num_workers=0)


def serve_worker(a: argparse.Namespace, run_ours: Callable, run_trl: Callable, metric: str,
                 units: float) -> None:
    """Child entry: run side ``a.worker`` (``ours*`` -> run_ours, else run_trl) and report
    ``metric`` = units of work / loop seconds."""
    def run(a, tmp):
        res = (run_ours if a.worker.startswith("ours") else run_trl)(a, tmp)
        res[metric] = units / res["loop_s"]
        return res

    child(run, a)


def child(run: Callable[[argparse.Namespace, Path], dict], a: argparse.Namespace) -> None:
    """Run one side in this (fresh) process and print its RESULT line."""
    import tempfile

    import torch

    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory(prefix=f"bench_{a.worker}_") as d:
        res = run(a, Path(d))
    res["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(res), flush=True)


# ----------------------------------------------------------------------------- fixtures


def prepare_world(out: Path) -> tuple[Path, Path]:
    """The quick synthetic world and its SFT policy under ``out`` (reused when present)."""
    from rlhfkit.demo import sft_config, world_config
    from rlhfkit.synthetic.world import build
    from rlhfkit.train.sft import train as sft_train

    world = build(world_config(out, quick=True))
    sft = Path(sft_config(world, out, quick=True).output_dir) / "final"
    if not (sft / "config.json").exists():
        cfg = sft_config(world, out, quick=True)
        cfg.resume = True  # a rerun continues an interrupted SFT run
        sft = Path(sft_train(cfg))
    return Path(world), sft


def make_llama20m(sft: Path, out: Path, seed: int = 0) -> Path:
    """A randomly initialised ~20M-param Llama with the world's tokenizer, as an HF directory.
    Random weights are fine for throughput: both sides run the same weights, and in RL both
    then sample to the length limit (a random policy rarely emits EOS), which is identical work."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = out / "llama20m"
    if (path / "config.json").exists():
        return path
    tok = AutoTokenizer.from_pretrained(sft)
    base = AutoConfig.from_pretrained(sft)
    cfg = LlamaConfig(vocab_size=base.vocab_size, bos_token_id=base.bos_token_id,
                      eos_token_id=base.eos_token_id, pad_token_id=base.pad_token_id, **LLAMA20M)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    tmp = out / "llama20m.tmp"
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.replace(tmp, path)
    return path


def make_pairs(world: Path, out: Path, n: int = 2000, seed: int = 0) -> Path:
    """Preference pairs from the SFT data: chosen = the row's own completion, rejected = another
    row's completion (a deterministic derangement). Content does not matter for throughput; both
    sides read the same file."""
    path = out / "pairs.jsonl"
    if path.exists() and sum(1 for _ in path.open()) >= n:
        return path
    rows = [json.loads(ln) for ln in (world / "sft.jsonl").read_text().splitlines() if ln.strip()]
    rng = random.Random(seed)
    order = list(range(len(rows)))
    rng.shuffle(order)
    lines = []
    for k in range(min(n, len(rows))):
        i, j = order[k], order[(k + 1) % len(order)]
        lines.append(json.dumps({"prompt": rows[i]["prompt"], "chosen": rows[i]["completion"],
                                 "rejected": rows[j]["completion"]}))
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


def subset(src: Path, n: int, dst: Path) -> Path:
    """The first ``n`` rows of a JSONL file: with n = steps x batch both sides train exactly one
    epoch over the same rows (each row once), so the work is identical up to batch order."""
    lines = [ln for ln in src.read_text().splitlines() if ln.strip()]
    if len(lines) < n:
        raise SystemExit(f"{src} has {len(lines)} rows, {n} needed (lower --steps or the batch size)")
    dst.write_text("\n".join(lines[:n]) + "\n")
    return dst


def matmul_params(model_dir: Path, seq_cls: bool = False) -> int:
    """N of the 6·N·tokens count: every parameter except the input embedding table; for a
    sequence classifier the LM head is replaced by the (1-output) score head."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    n = sum(p.numel() for name, p in model.named_parameters() if "embed_tokens" not in name)
    if cfg.tie_word_embeddings:  # the tied LM head is still a (d x V) matmul per token
        n += cfg.vocab_size * cfg.hidden_size
    if seq_cls:
        n -= cfg.vocab_size * cfg.hidden_size - cfg.hidden_size
    return n


def matmul_peak_gflops(threads: int, size: int = 1536, repeats: int = 7) -> float:
    """Best-of-``repeats`` fp32 GFLOP/s of a square torch.mm at ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g)
    b = torch.randn(size, size, generator=g)
    c = torch.empty(size, size)
    torch.mm(a, b, out=c)  # warm-up: first call pays for allocation and dispatch
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b, out=c)
        best = min(best, time.perf_counter() - t)
    return 2 * size ** 3 / best / 1e9


# ----------------------------------------------------------------------------- parent side


def machine() -> dict:
    import torch
    import transformers
    import trl

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "trl": trl.__version__}


def ab_runs(script: str, args: list[str], sides: list[str], rounds: int, threads: int,
            metric: str, label: str = "", precision: str = "fp32") -> dict[str, list[dict]]:
    """Alternate ``sides`` (A B C A B C ...) ``rounds`` times, each in a fresh child process
    (accelerate allows one precision per process, and each side starts cold)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    for r in range(rounds):
        for side in sides:
            cmd = [sys.executable, script, *args, "--threads", str(threads), "--precision", precision,
                   "--worker", side]
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            line = next((ln for ln in reversed(p.stdout.splitlines()) if ln.startswith("RESULT ")), None)
            if p.returncode or line is None:
                sys.stderr.write(p.stdout[-4000:] + p.stderr[-4000:])
                raise SystemExit(f"{label} {side} run {r} failed (rc {p.returncode})")
            res = json.loads(line[len("RESULT "):])
            runs[side].append(res)
            print(f"{label} round {r} {side}: {res[metric]:.2f} {metric}, {res['peak_rss_mb']:.0f} MB",
                  file=sys.stderr, flush=True)
    return runs


def summarise(runs: dict[str, list[dict]], metric: str, pairs: list[tuple[str, str]],
              flops_per_unit: dict[str, float] | None = None) -> dict:
    """Medians per side, ratio and RSS ratio per (ours, trl) pair; FLOPs per unit for `add_mfu`."""
    med = {s: statistics.median(x[metric] for x in v) for s, v in runs.items()}
    rss = {s: statistics.median(x["peak_rss_mb"] for x in v) for s, v in runs.items()}
    out: dict = {"median": {s: round(v, 3) for s, v in med.items()},
                 "peak_rss_mb": {s: round(v, 1) for s, v in rss.items()},
                 "ratios": {f"{a}/{b}": {"throughput": round(med[a] / med[b], 3),
                                         "peak_rss": round(rss[a] / rss[b], 3)} for a, b in pairs}}
    if flops_per_unit:
        out["flops_per_unit"] = {s: f for s, f in flops_per_unit.items() if s in med}
    out["runs"] = {s: [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in x.items()} for x in v]
                   for s, v in runs.items()}
    return out


def add_mfu(models: dict[str, dict], peak_gflops: float) -> None:
    """MFU per side = median units/s x FLOPs per unit / measured peak (in place)."""
    for res in models.values():
        fpu = res.get("flops_per_unit")
        if fpu:
            res["mfu"] = {s: round(res["median"][s] * f / (peak_gflops * 1e9), 4) for s, f in fpu.items()}


def write_result(out: Path, name: str, result: dict) -> None:
    result = {"bench": name, "date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
              **result}
    line = json.dumps(result)
    print(line, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(line + "\n")


def common_args(ap: argparse.ArgumentParser, steps: int, rounds: int = 3) -> None:
    ap.add_argument("--output", default=DEFAULT_OUTPUT, help="cache of world/models/data and result JSON")
    ap.add_argument("--steps", type=int, default=steps, help="optimizer steps per run (tiny model)")
    ap.add_argument("--steps-20m", type=int, default=max(2, steps // 4),
                    help="optimizer steps per run on the ~20M model (each step is compute-bound there)")
    ap.add_argument("--rounds", type=int, default=rounds, help="A/B rounds; medians over rounds")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in each run")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="both sides: fp32, or fp32 weights with bf16-autocast forwards")
    ap.add_argument("--models", default="tiny,20m",
                    help="comma list of tiny (the quick world's SFT policy), 20m")
    # Child-process arguments (set by the parent).
    for hidden in ("--worker", "--model-dir", "--data", "--world"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)


def padding_free_arg(ap: argparse.ArgumentParser, trl_side: str) -> None:
    """``--padding-free``: rlhfkit's side with ``padding_free`` on (bin-packed micro-batches, see
    rlhfkit/data/padding_free.py); ``trl_side`` says what TRL's side does then."""
    ap.add_argument("--padding-free", action="store_true",
                    help=f"rlhfkit with padding_free on (off by default here); TRL: {trl_side}")


def padding_free_args(a: argparse.Namespace) -> list[str]:
    """The flag again for the child processes, and the result name's suffix."""
    return ["--padding-free"] if a.padding_free else []


def bench_name(name: str, a: argparse.Namespace) -> str:
    """``<name>_vs_trl``, or ``<name>_vs_trl_padding_free`` so the two settings do not overwrite."""
    return f"{name}_vs_trl" + ("_padding_free" if a.padding_free else "")


def pad_shares(lengths: list[list[int]], batch: int, steps: int, seed: int) -> dict[str, float]:
    """Share of the positions computed that are padding, over rlhfkit's micro-batches of ``batch``
    examples in its seeded order (``lengths[i]``: the sequence lengths of example i -- one for SFT,
    chosen and rejected for a pair): padded (every sequence as long as the micro-batch's longest)
    and padding-free (``first_fit_decreasing`` rows of that width)."""
    from rlhfkit.data.padding_free import first_fit_decreasing
    from rlhfkit.train.common import batch_indices

    real = padded = packed = 0
    for step in range(steps):
        lens = [n for i in batch_indices(step, n_examples=len(lengths), global_batch=batch, seed=seed)
                for n in lengths[i]]
        width = max(lens)
        real += sum(lens)
        padded += len(lens) * width
        packed += len(first_fit_decreasing(lens, width)) * width
    return {"pad_share_padded": round(1 - real / padded, 3),
            "pad_share_padding_free": round(1 - real / packed, 3)}


def fixtures(out: Path, models: str) -> tuple[Path, Path, dict[str, Path]]:
    world, sft = prepare_world(out)
    dirs = {}
    for m in models.split(","):
        if m == "tiny":
            dirs[m] = sft
        elif m == "20m":
            dirs[m] = make_llama20m(sft, out)
        else:
            raise SystemExit(f"--models: unknown model {m!r} (tiny, 20m)")
    return world, sft, dirs


def model_steps(a: argparse.Namespace, name: str) -> int:
    return a.steps_20m if name == "20m" else a.steps


def peak(threads: int) -> float:
    return round(matmul_peak_gflops(threads), 2)


def parent_setup(a: argparse.Namespace) -> tuple[Path, Path, dict[str, Path], float]:
    """Parent side: thread count, cached fixtures, and the matmul peak measured before the runs."""
    import torch

    torch.set_num_threads(a.threads)
    out = Path(a.output)
    world, _, dirs = fixtures(out, a.models)
    return out, world, dirs, peak(a.threads)


def finish(out: Path, name: str, a: argparse.Namespace, results: dict, setting: dict,
           peak_before: float) -> None:
    """Peak again after the runs (the larger of before/after: a busy moment cannot inflate MFU),
    MFU per side, and the result JSON."""
    top = max(peak_before, peak(a.threads))
    # MFU is against the fp32 matmul peak at either precision: one yardstick for both (a CPU with
    # native bf16 arithmetic has a higher bf16 peak, so its bf16 MFU would read high).
    add_mfu(results, top)
    write_result(out, name if a.precision == "fp32" else f"{name}_{a.precision}",
                 {"setting": {"threads": a.threads, "rounds": a.rounds, "dtype": "float32",
                              "precision": a.precision, "device": "cpu", "timer": "training loop only",
                              **setting},
                  "matmul_peak_gflops": top, "models": results})
