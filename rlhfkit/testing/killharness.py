"""SIGKILL-and-resume harness: prove that a stage killed at random points and resumed with
``resume=true`` ends with exactly the weights of an uninterrupted run.

A stage runs as a user runs it, ``python -m rlhfkit <stage> key=value ...`` in a subprocess
(one torch thread). The parent kills it with SIGKILL -- no handler, no cleanup, like an OOM
killer or a preempted node -- at seeded random points of three kinds:

``delay``   a random wall-clock delay: either into startup (loading, restoring the checkpoint,
            trimming metrics) or up to a step after ``latest`` reached a random step N
            (forward, backward, optimizer step, metrics line or save: wherever it lands);
            the delays scale with the reference run's timing, and a run faster than the
            reference is killed at its next checkpoint at the latest, so the kill always lands;
``tmp``     while checkpoint ``step-N.tmp`` is being written (the directory polled every ~1 ms,
            the kill sent once it holds 0-2 entries, i.e. before or between file writes);
``latest``  right after the ``latest`` marker switched to ``step-N`` (after the rename, around
            pruning and the next step's metrics line).

After every kill the run directory must still be consistent (``latest`` names a complete
checkpoint). Then the stage is rerun with ``resume=true`` until it exits 0, and the result is
compared with an uninterrupted reference run: ``final/`` and ``best/`` weights, the last
checkpoint's models (the PPO critic is ``model_1``), optimizer and scheduler states, all with
``torch.equal``; ``metrics.jsonl`` must hold every step exactly once with the reference's values.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

MODES = ("delay", "tmp", "latest")
# Keys whose values depend on wall-clock time, not on the computation.
_TIMING = ("second", "time", "elapsed")


def _arg(key: str, value: Any) -> str:
    if isinstance(value, bool):
        value = "true" if value else "false"
    elif value is None:
        value = "null"
    elif isinstance(value, (list, dict)):
        value = json.dumps(value)
    return f"{key}={value}"


def stage_command(stage: str, overrides: dict[str, Any]) -> list[str]:
    return [sys.executable, "-m", "rlhfkit", stage, *(_arg(k, v) for k, v in overrides.items())]


def stage_env() -> dict[str, str]:
    # One thread: bitwise comparisons need the same reduction order in every invocation, and
    # the machines this runs on are small and shared.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONHASHSEED": "0"}


def latest_name(run_dir: Path) -> str | None:
    try:
        return (run_dir / "checkpoints" / "latest").read_text(encoding="utf-8").strip() or None
    except (FileNotFoundError, NotADirectoryError):
        return None


def latest_step(run_dir: Path) -> int:
    name = latest_name(run_dir)
    return int(name.split("-")[1]) if name else 0


def consistency_problems(run_dir: Path) -> list[str]:
    """What a crash may never leave behind: a ``latest`` marker naming a missing or incomplete
    checkpoint (resume would silently start over or load half a state)."""
    name = latest_name(run_dir)
    if name is None:
        return []
    ckpt = run_dir / "checkpoints" / name
    missing = [f for f in ("state.json", "model.safetensors") if not (ckpt / f).is_file()]
    return [f"latest -> {name}: missing {', '.join(missing)}"] if missing else []


@dataclass
class Invocation:
    resume: bool
    mode: str | None  # the kill planned for it (None: run to the end)
    target: str  # what the kill waited for
    killed: bool
    returncode: int
    seconds: float
    latest_before: int
    latest_after: int


@dataclass
class KillReport:
    stage: str
    invocations: list[Invocation] = field(default_factory=list)
    compared: list[str] = field(default_factory=list)  # files compared bitwise
    mismatches: list[str] = field(default_factory=list)
    metrics_problems: list[str] = field(default_factory=list)
    consistency: list[str] = field(default_factory=list)

    @property
    def kills(self) -> int:
        return sum(i.killed for i in self.invocations)

    @property
    def resumes(self) -> int:
        return sum(i.resume for i in self.invocations)

    @property
    def bitwise_equal(self) -> bool:
        return bool(self.compared) and not self.mismatches

    @property
    def ok(self) -> bool:
        return self.bitwise_equal and not self.metrics_problems and not self.consistency

    def describe(self) -> str:
        lines = [f"{self.stage}: {self.kills} kills, {self.resumes} resumes, "
                 f"{len(self.compared)} files compared, "
                 f"bitwise {'equal' if self.bitwise_equal else 'DIFFERENT'}"]
        for i in self.invocations:
            lines.append(f"  {'resume' if i.resume else 'fresh '} {i.mode or 'finish':6s} {i.target:28s} "
                         f"killed={i.killed} rc={i.returncode} {i.seconds:.1f}s latest {i.latest_before}->"
                         f"{i.latest_after}")
        lines += [f"  mismatch: {m}" for m in self.mismatches]
        lines += [f"  metrics: {m}" for m in self.metrics_problems]
        lines += [f"  consistency: {m}" for m in self.consistency]
        return "\n".join(lines)


class StageFailed(RuntimeError):
    pass


def _run(cmd: list[str], log_path: Path, trigger: Callable[[float], bool] | None, timeout: float,
         on_poll: Callable[[float], None] | None = None) -> tuple[int, bool, float]:
    """Run ``cmd``; SIGKILL its process group as soon as ``trigger(elapsed)`` is true.
    Returns (returncode, killed, seconds)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w", encoding="utf-8") as log:
        t0 = time.monotonic()
        # Its own process group, so the kill reaches everything the stage started.
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=stage_env(),
                                start_new_session=True)
        try:
            while True:
                rc = proc.poll()
                elapsed = time.monotonic() - t0
                if rc is not None:
                    return rc, False, elapsed
                if on_poll is not None:
                    on_poll(elapsed)
                if trigger is not None and trigger(elapsed):
                    os.killpg(proc.pid, signal.SIGKILL)
                    return proc.wait(), True, elapsed
                if elapsed > timeout:
                    raise StageFailed(f"{' '.join(cmd)} ran longer than {timeout} s (log: {log_path})")
                time.sleep(0.001)  # ~1 ms polling: a checkpoint write takes tens of ms
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@dataclass
class Reference:
    run_dir: Path
    seconds: float
    startup: float  # seconds before the first step finished, minus one step
    step_seconds: float


def reference_run(stage: str, overrides: dict[str, Any], run_dir: Path, *, n_steps: int,
                  timeout: float = 900) -> Reference:
    """The uninterrupted run; its timing (from when each ``latest`` appeared) places the delay kills."""
    seen: dict[int, float] = {}

    def watch(elapsed: float) -> None:
        s = latest_step(run_dir)
        if s and s not in seen:
            seen[s] = elapsed

    cmd = stage_command(stage, {**overrides, "output_dir": str(run_dir)})
    rc, _, secs = _run(cmd, run_dir.parent / f"{run_dir.name}-logs" / "reference.log", None, timeout, watch)
    if rc != 0:
        logs = run_dir.parent / f"{run_dir.name}-logs"
        raise StageFailed(f"reference {stage} run failed (rc {rc}); log in {logs}")
    if len(seen) >= 2:
        first, last = min(seen), max(seen)
        step = (seen[last] - seen[first]) / max(last - first, 1)
        startup = max(seen[first] - first * step, 0.0)
    else:
        step, startup = secs / (n_steps + 2), 2 * secs / (n_steps + 2)
    return Reference(run_dir, secs, startup, step)


def _trigger(mode: str, run_dir: Path, rng: random.Random, ref: Reference, *, n_steps: int,
             kills_left: int) -> tuple[Callable[[float], bool], str] | None:
    start = latest_step(run_dir)
    if start >= n_steps:
        return None
    if mode == "delay":
        if rng.random() < 0.25 or start + 1 > n_steps - 1:
            # While loading models and data, restoring the checkpoint, trimming metrics.jsonl.
            delay = rng.uniform(0.3, 1.0) * ref.startup
            # Backstop: if this invocation runs faster than the reference did (the reference
            # may have shared the machine with heavier load), kill when its first step lands
            # rather than let it finish unkilled.
            return (lambda elapsed: elapsed >= delay or latest_step(run_dir) > start), \
                f"{delay:.2f}s into startup (or at its first checkpoint)"
        # Mid-step: a fraction of a step after `latest` reached step N (N < n_steps, so the run
        # is still going), wherever that lands (forward, backward, optimizer, metrics, save).
        # Anchored to an event rather than to the start, so a slower or faster machine than
        # the reference run's still gets its kill.
        n = rng.randint(start + 1, max(start + 1, min(n_steps - 1, n_steps - 1 - kills_left)))
        wait = rng.uniform(0.0, 1.0) * ref.step_seconds
        seen: list[float] = []

        def mid_step(elapsed: float) -> bool:
            if not seen:
                if latest_step(run_dir) >= n:
                    seen.append(elapsed)
                return False
            # Backstop as above: the next step's checkpoint, at the latest (n < n_steps - 1).
            return elapsed - seen[0] >= wait or latest_step(run_dir) > n

        return mid_step, f"{wait:.2f}s after step-{n:08d} (or at the next checkpoint)"
    # Leave later kills a step each to land on.
    hi = max(start + 1, n_steps - kills_left)
    target = rng.randint(start + 1, min(hi, n_steps))
    name = f"step-{target:08d}"
    if mode == "tmp":
        tmp = run_dir / "checkpoints" / f"{name}.tmp"
        entries = rng.randint(0, 2)

        def in_write(_elapsed: float) -> bool:
            try:
                return len(os.listdir(tmp)) >= entries
            except (FileNotFoundError, NotADirectoryError):
                return False

        return in_write, f"{name}.tmp with >={entries} files"
    if mode == "latest":
        return (lambda _elapsed: latest_name(run_dir) == name), f"latest={name}"
    raise ValueError(f"unknown kill mode {mode!r}; one of {MODES}")


def kill_and_resume(stage: str, overrides: dict[str, Any], run_dir: Path, *, n_steps: int, modes: list[str],
                    seed: int, reference: Reference | None = None, timeout: float = 900,
                    max_resumes: int = 3, label: str | None = None) -> KillReport:
    """Run ``stage`` into ``run_dir`` with one SIGKILL per entry of ``modes`` (fewer if the run
    finishes first), resume until done, and compare with ``reference`` (run here if None).

    ``overrides`` must make every step checkpointed (``save_every=1``), ``max_steps=n_steps``,
    ``log_every=1``; ``output_dir`` and ``resume`` are set here.
    """
    run_dir = Path(run_dir)
    if reference is None:
        reference = reference_run(stage, overrides, run_dir.parent / f"{run_dir.name}-reference",
                                  n_steps=n_steps, timeout=timeout)
    rng = random.Random(seed)
    report = KillReport(label or stage)
    logs = run_dir.parent / f"{run_dir.name}-logs"
    finished = False

    def invoke(mode: str | None, kills_left: int) -> None:
        nonlocal finished
        resume = bool(report.invocations)  # the first invocation is a fresh run, as a user starts one
        before = latest_step(run_dir)
        trig = mode and _trigger(mode, run_dir, rng, reference, n_steps=n_steps, kills_left=kills_left)
        if mode and trig is None:
            return
        trigger, target = trig if trig else (None, "-")
        cmd = stage_command(stage, {**overrides, "output_dir": str(run_dir), "resume": resume})
        log = logs / f"{len(report.invocations):02d}-{mode or 'finish'}.log"
        rc, killed, secs = _run(cmd, log, trigger, timeout)
        after = latest_step(run_dir)
        report.invocations.append(Invocation(resume, mode, target, killed, rc, secs, before, after))
        if killed:
            report.consistency += [f"after kill {report.kills}: {p}" for p in consistency_problems(run_dir)]
        elif rc == 0:
            finished = True
        else:
            tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
            raise StageFailed(f"{stage} invocation {len(report.invocations)} failed (rc {rc}), "
                              f"log {log}:\n{tail}")

    for i, mode in enumerate(modes):
        if finished:
            break
        invoke(mode, len(modes) - i - 1)
    for _ in range(max_resumes):
        if finished:
            break
        invoke(None, 0)
    if not finished:
        raise StageFailed(f"{stage} did not finish after {max_resumes} plain resumes")

    report.compared, report.mismatches = compare_runs(reference.run_dir, run_dir)
    report.metrics_problems = metrics_problems(reference.run_dir, run_dir, n_steps=n_steps)
    return report


# ----------------------------------------------------------------------------- comparison


def _load(path: Path) -> Any:
    import torch
    from safetensors.torch import load_file

    if path.suffix == ".safetensors":
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def _diff(a: Any, b: Any, where: str) -> str | None:
    """First difference between two (nested) states, or None; tensors must be torch.equal."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        ok = (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
              and a.shape == b.shape and torch.equal(a, b))
        if ok:
            return None
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape:
            return f"{where}: max |diff| {(a.double() - b.double()).abs().max().item():.3g}"
        return f"{where}: tensor differs"
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return f"{where}: keys differ ({sorted(map(str, a.keys() ^ b.keys()))[:5]})"
        for k in a:
            if (d := _diff(a[k], b[k], f"{where}[{k}]")) is not None:
                return d
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"{where}: length {len(a)} != {len(b)}"
        for k, (x, y) in enumerate(zip(a, b)):
            if (d := _diff(x, y, f"{where}[{k}]")) is not None:
                return d
        return None
    return None if a == b else f"{where}: {a!r} != {b!r}"


def compared_files(run_dir: Path) -> list[str]:
    """Relative paths of the state files that must be bitwise equal: the final and best models,
    and in the last checkpoint every model (policy, critic), optimizer and scheduler."""
    def rel(paths) -> list[str]:
        return [p.relative_to(run_dir).as_posix() for p in sorted(paths)]

    files = rel((run_dir / "final").glob("*.safetensors")) + rel((run_dir / "best").glob("*.safetensors"))
    name = latest_name(run_dir)
    if name:
        ckpt = run_dir / "checkpoints" / name
        for pattern in ("model*.safetensors", "optimizer*.bin", "scheduler*.bin"):
            files += rel(ckpt.glob(pattern))
    return files


def compare_runs(ref_dir: Path, run_dir: Path) -> tuple[list[str], list[str]]:
    """(files compared, mismatches) between a reference run directory and a resumed one."""
    ref_files, got_files = compared_files(ref_dir), compared_files(run_dir)
    mismatches = [f"{f}: only in the reference" for f in ref_files if f not in got_files]
    mismatches += [f"{f}: not in the reference" for f in got_files if f not in ref_files]
    both = [f for f in ref_files if f in got_files]
    for f in both:
        if (d := _diff(_load(ref_dir / f), _load(run_dir / f), f)) is not None:
            mismatches.append(d)
    # The reward normalisation lives in config.json (reward_offset / reward_scale).
    rc, gc = ref_dir / "final" / "config.json", run_dir / "final" / "config.json"
    if rc.is_file() and gc.is_file():
        a, b = (json.loads(p.read_text(encoding="utf-8")) for p in (rc, gc))
        for k in set(a) | set(b):
            if k != "_name_or_path" and a.get(k) != b.get(k):
                mismatches.append(f"final/config.json: {k}: {a.get(k)!r} != {b.get(k)!r}")
        both.append("final/config.json")
    return both, mismatches


def metrics_problems(ref_dir: Path, run_dir: Path, *, n_steps: int) -> list[str]:
    """Every logged step exactly once, in order, with the reference run's values."""
    from rlhfkit.train.common import read_metrics

    ref, got = read_metrics(ref_dir), read_metrics(run_dir)
    steps = [r["step"] for r in got]
    problems = []
    dup = sorted({s for s in steps if steps.count(s) > 1})
    if dup:
        problems.append(f"duplicated steps {dup}")
    missing = sorted(set(range(1, n_steps + 1)) - set(steps))
    if missing:
        problems.append(f"missing steps {missing}")
    if steps != sorted(steps):
        problems.append(f"steps out of order: {steps}")
    if not problems:
        def clean(r: dict) -> dict:
            return {k: v for k, v in r.items() if not any(t in k for t in _TIMING)}

        for a, b in zip(map(clean, ref), map(clean, got)):
            if a != b:
                keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
                problems.append(f"step {a.get('step')}: values differ from the reference in {keys}")
        if len(ref) != len(got):
            problems.append(f"{len(got)} metrics lines, the reference has {len(ref)}")
    return problems


# ----------------------------------------------------------------------------- tiny stage runs

STAGES = ("sft", "reward", "dpo", "ppo", "grpo")


def write_small_data(world: Path, root: Path, n: int = 64) -> dict[str, Path]:
    """``n`` demonstrations, ``n`` pairs and ``n`` prompts from a synthetic world. The pairs take
    the row's own completion as chosen and the next row's as rejected: their content does not
    matter here, only the mechanics of resume."""
    root.mkdir(parents=True, exist_ok=True)
    lines = (Path(world) / "sft.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(ln) for ln in lines if ln.strip()][:n]
    pairs = [{"prompt": r["prompt"], "chosen": r["completion"],
              "rejected": rows[(i + 1) % len(rows)]["completion"]} for i, r in enumerate(rows)]

    def write(name: str, items: list[dict]) -> Path:
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in items), encoding="utf-8")
        return root / name

    return {"sft": write("sft.jsonl", rows), "pairs": write("pairs.jsonl", pairs),
            "prompts": write("prompts.jsonl", [{"prompt": r["prompt"]} for r in rows])}


def tiny_overrides(stage: str, world: Path, sft_model: Path, data: dict[str, Path], *,
                   n_steps: int) -> tuple[str, dict[str, Any]]:
    """(CLI stage, key=value overrides) of a tiny run of ``stage`` (one of :data:`STAGES`;
    'ppo' is PPO with its separate critic, 'grpo' the critic-free estimator) that checkpoints
    and logs every step, with evaluation off."""
    common = {"max_steps": n_steps, "save_every": 1, "log_every": 1, "eval_fraction": 0.0, "max_length": 64,
              "learning_rate": 1e-3, "seed": 0}
    batch = {"per_device_batch_size": 4}
    rl = {"model": str(sft_model), "data": str(data["prompts"]), "reward_functions": ["gold"],
          "prompts_per_device": 4, "ppo_epochs": 1, "mini_batch_size": 2, "max_new_tokens": 16,
          "eval_prompts": 0}
    per_stage = {
        "sft": ("sft", {**batch, "model": str(Path(world) / "base"), "data": str(data["sft"])}),
        "reward": ("reward", {**batch, "model": str(sft_model), "data": str(data["pairs"])}),
        "dpo": ("dpo", {**batch, "model": str(sft_model), "data": str(data["pairs"])}),
        "ppo": ("ppo", {**rl, "estimator": "ppo"}),
        "grpo": ("ppo", {**rl, "estimator": "grpo", "num_samples": 2, "prompts_per_device": 2}),
    }
    cli_stage, extra = per_stage[stage]
    return cli_stage, {**common, **extra}
