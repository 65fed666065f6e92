"""Mechanics shared by every training stage, written once: run directories, seeding, the
deterministic data schedule, optimizer/scheduler, the accumulated optimizer step, metrics and
atomic, resumable checkpoints. Each stage keeps its own explicit loop and calls these.

Run directory layout (ARCHITECTURE.md "Run directories")::

    <output_dir>/config.yaml         resolved config
    <output_dir>/metrics.jsonl       one JSON line per logged step (always written)
    <output_dir>/checkpoints/step-N/ accelerate state (model, optimizer, scheduler, RNG) + state.json
    <output_dir>/checkpoints/latest  name of the newest *complete* checkpoint
    <output_dir>/final/              Hugging Face model directory (safetensors)
    <output_dir>/summary.json        final figures of the run
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import random
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from rlhfkit.errors import ConfigError, TrainingError

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_accelerator(cfg, run_dir: Path):
    """An Accelerator for this run. Accumulation is done by hand (see `accumulated_step`), so
    accelerate is told 1: its own version divides every micro-loss by the step count, which
    is only right when all micro-batches hold the same number of loss tokens."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    trackers = list(getattr(cfg, "trackers", []) or [])
    for name in trackers:  # fail before any work, naming the package to install
        module = {"tensorboard": "torch.utils.tensorboard", "wandb": "wandb"}[name]
        try:
            importlib.import_module(module)
        except ImportError:
            raise ConfigError(f"trackers: '{name}' needs its package: "
                              f"pip install 'rlhfkit[{name}]'") from None
    mixed_precision = getattr(cfg, "mixed_precision", "no")
    cpu = not torch.accelerator.is_available()
    if cpu and mixed_precision == "fp16":
        # accelerate would quietly run fp32 (it enables fp16 autocast on GPUs only).
        raise ConfigError("mixed_precision: 'fp16' needs a GPU (CPU autocast has no useful fp16 path); "
                          "use 'bf16' or 'no' on CPU")
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state.get("_mixed_precision", mixed_precision) != mixed_precision:
        # accelerate keeps one process-wide state and refuses a second Accelerator with another
        # mixed_precision; a process that runs stages one after another (a pipeline, the tests,
        # a benchmark comparing precisions) needs the new one. The process group is kept.
        AcceleratorState._reset_state()
    # step_scheduler_with_optimizer=False: our schedule counts global optimizer steps, so the
    # scheduler must step once per step, not once per process (accelerate's default).
    # cpu=True on machines with no accelerator: only then does accelerate turn a torchrun
    # launch (WORLD_SIZE > 1) into a gloo MULTI_CPU process group instead of N lone processes.
    acc = Accelerator(
        cpu=cpu,
        mixed_precision=mixed_precision,
        step_scheduler_with_optimizer=False,
        log_with=trackers or None,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
    )
    if trackers:
        acc.init_trackers(run_dir.name, config=cfg.model_dump(mode="json"))
    return acc


# ----------------------------------------------------------------------------- data order


def steps_per_epoch(n_examples: int, global_batch: int, *, source: str) -> int:
    """Optimizer steps in one pass; the last incomplete global batch is dropped so every step
    sees the same number of sequences on every process."""
    if n_examples < global_batch:
        raise ConfigError(
            f"{source}: {n_examples} training examples are fewer than one global batch of {global_batch} "
            "(per_device_batch_size x gradient_accumulation_steps x processes); lower the batch size")
    return n_examples // global_batch


def total_steps(cfg, n_examples: int, global_batch: int, *, source: str) -> int:
    spe = steps_per_epoch(n_examples, global_batch, source=source)
    return cfg.max_steps or max(1, math.ceil(cfg.num_epochs * spe))


def batch_indices(step: int, *, n_examples: int, global_batch: int, seed: int) -> list[int]:
    """Example indices of global optimizer step ``step`` (0-based).

    A pure function of (step, seed): every epoch is a fresh permutation seeded by
    (seed, epoch), so a resumed run needs only the step number to continue the exact data order,
    and any process count sees the same global batch.
    """
    spe = n_examples // global_batch
    epoch, pos = divmod(step, spe)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n_examples, generator=g)
    return perm[pos * global_batch:(pos + 1) * global_batch].tolist()


def micro_batches(indices: list[int], *, per_device: int, accumulation: int, rank: int,
                  world: int) -> Iterator[list[int]]:
    """This process's share of each micro-batch: global batch = accumulation x world x per_device."""
    span = world * per_device
    for m in range(accumulation):
        chunk = indices[m * span:(m + 1) * span]
        yield chunk[rank * per_device:(rank + 1) * per_device]


# ----------------------------------------------------------------------------- optimisation


def make_optimizer(model, cfg) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and norm weights (1-D parameters).

    The fused kernel (one pass over all parameters) where torch has one for these parameters:
    on a 20M-parameter model on one CPU thread an update takes 15 ms fused against 74 ms for the
    per-tensor loop, a fifth of a training step (bench/sft_vs_trl.py). It is what transformers'
    Trainer uses by default too (``adamw_torch_fused``), and it is deterministic, so resume stays
    bitwise."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [g for g in ({"params": decay, "weight_decay": cfg.weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    kw = {"lr": cfg.learning_rate, "betas": tuple(cfg.adam_betas), "eps": cfg.adam_eps}
    try:
        return torch.optim.AdamW(groups, fused=True, **kw)
    except (RuntimeError, ValueError):  # a device or dtype without a fused kernel
        return torch.optim.AdamW(groups, **kw)


def make_scheduler(optimizer, cfg, num_steps: int):
    from transformers import get_scheduler

    name = {"constant": "constant_with_warmup"}.get(cfg.lr_scheduler, cfg.lr_scheduler)
    return get_scheduler(name, optimizer, num_warmup_steps=int(cfg.warmup_ratio * num_steps),
                         num_training_steps=num_steps)


def clip_and_step(accelerator, model, optimizer, scheduler, max_grad_norm: float | None) -> float | None:
    """Clip (if asked), step optimizer and scheduler, zero grads; returns the pre-clip grad norm.

    NaN/inf guard: the norm is computed over the synchronised gradients, so every process sees
    the same value; a non-finite one (from a non-finite loss or an overflow) skips the update
    entirely -- weights and optimizer state stay as they were -- and returns None so the caller
    stops or counts a skip (``on_nonfinite``).
    """
    if max_grad_norm is not None:
        norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    else:
        norm = torch.norm(torch.stack([p.grad.detach().norm() for p in model.parameters()
                                       if p.grad is not None]))
    if not torch.isfinite(torch.as_tensor(norm)):
        optimizer.zero_grad(set_to_none=True)
        return None
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)


# ----------------------------------------------------------------------------- metrics


class MetricsLog:
    """Appends one JSON line per logged step to ``metrics.jsonl`` (main process only).

    On resume from step k, lines with step > k (written after the checkpoint, before the crash)
    are dropped first, so the file continues with no duplicated or missing steps.
    """

    def __init__(self, run_dir: Path, accelerator, *, resume_step: int = 0):
        self.path = run_dir / "metrics.jsonl"
        self.acc = accelerator
        if accelerator.is_main_process:
            if resume_step == 0:
                self.path.write_text("", encoding="utf-8")
            elif self.path.exists():
                kept = [ln for ln in self.path.read_text(encoding="utf-8").splitlines()
                        if ln.strip() and (st := _step_of(ln)) is not None and st <= resume_step]
                # Temp file + rename: truncating in place would lose the history to a kill
                # between the truncate and the write.
                tmp = self.path.with_suffix(".jsonl.tmp")
                tmp.write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")
                os.replace(tmp, self.path)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": step, **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()}}
        if self.acc.is_main_process:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        if self.acc.trackers:
            self.acc.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)


def _step_of(line: str) -> int | None:
    """The step of a metrics line; None for a line torn by a crash mid-write (it is dropped on
    resume, and its step is logged again)."""
    try:
        return json.loads(line).get("step", 0)
    except (json.JSONDecodeError, AttributeError):
        return None


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- checkpoints


class Checkpoints:
    """Atomic, resumable checkpoints under ``<run_dir>/checkpoints``.

    A checkpoint is written into ``step-N.tmp`` and renamed to ``step-N`` only when complete;
    then ``latest`` is atomically replaced with its name. A crash mid-save therefore leaves the
    previous ``latest`` intact, and a leftover ``.tmp`` directory is ignored and cleaned up.

    Retention: the last ``keep`` checkpoints, plus (with ``best_metric``) the one saved at the
    step with the best value of that metric (``observe`` feeds it each step's metrics). The best
    record travels in every checkpoint's state.json (``keep_best``), so a resumed run holds
    exactly the record it had at that step, and is mirrored in ``best.json`` for people. Pruning
    happens only after ``latest`` moved, so the record in the latest checkpoint always names a
    directory that exists.
    """

    def __init__(self, run_dir: Path, accelerator, keep: int = 2, best_metric: str | None = None,
                 best_mode: str = "max"):
        self.dir = run_dir / "checkpoints"
        self.acc = accelerator
        self.keep = keep
        self.best_metric, self.best_mode = best_metric, best_mode
        self.best: dict[str, Any] | None = None  # {"metric", "mode", "value", "step", "dir"}
        self._seen: dict[int, float] = {}  # step -> watched metric, until that step is saved

    def latest(self) -> Path | None:
        marker = self.dir / "latest"
        if not marker.is_file():
            return None
        path = self.dir / marker.read_text(encoding="utf-8").strip()
        return path if (path / "state.json").is_file() else None

    def _beats_best(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best["value"] if self.best_mode == "max" else value < self.best["value"]

    def observe(self, step: int, metrics: dict[str, Any]) -> bool:
        """Note the watched metric of ``step``; True when it beats the best checkpoint so far
        (the caller then checkpoints this step even if no save is due)."""
        value = metrics.get(self.best_metric) if self.best_metric else None
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return False
        self._seen[step] = float(value)
        return self._beats_best(float(value))

    def save(self, step: int, state: dict[str, Any]) -> Path:
        final = self.dir / f"step-{step:08d}"
        tmp = self.dir / f"step-{step:08d}.tmp"
        current = self.latest()
        if current is not None and current.name == final.name:
            # Resumed from this very step (a run killed after its final checkpoint): the state
            # on disk is the one just loaded. Rewriting it would delete the checkpoint `latest`
            # names until the rename, and a kill in that window would lose the whole run.
            return final
        value = self._seen.get(step)
        self._seen = {s: v for s, v in self._seen.items() if s > step}  # older steps can no longer be saved
        if value is not None and self._beats_best(value):
            self.best = {"metric": self.best_metric, "mode": self.best_mode, "value": value, "step": step,
                         "dir": str(final)}
        if state.get("final") and self.best_metric and self.best is None:
            log.warning("keep_best_metric '%s' was never logged (it must be a metrics.jsonl key); "
                        "no best checkpoint kept", self.best_metric)
        if self.acc.is_main_process:
            self.dir.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
        self.acc.wait_for_everyone()
        # Every process writes its own RNG state; the main process writes model/optimizer.
        self.acc.save_state(str(tmp), safe_serialization=True)
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            write_json(tmp / "state.json", {"step": step, **state, "keep_best": self.best})
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            marker_tmp = self.dir / "latest.tmp"
            marker_tmp.write_text(final.name, encoding="utf-8")
            os.replace(marker_tmp, self.dir / "latest")
            if self.best is not None:
                write_json(self.dir / "best.json", self.best)
            self._prune(keep_name=final.name)
        self.acc.wait_for_everyone()
        return final

    def load(self, path: Path) -> dict[str, Any]:
        """Restore model/optimizer/scheduler/RNG states (weights_only loads) and return state.json."""
        self.acc.load_state(str(path))
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        self.best = state.get("keep_best")
        return state

    def _prune(self, keep_name: str) -> None:
        done = sorted(p for p in self.dir.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
        kept = {keep_name, *(p.name for p in done[-self.keep:])}
        if self.best is not None:
            kept.add(Path(self.best["dir"]).name)
        for p in done:
            if p.name not in kept:
                shutil.rmtree(p, ignore_errors=True)
        for p in self.dir.glob("step-*.tmp"):
            shutil.rmtree(p, ignore_errors=True)


def progress(total: int, initial: int, accelerator, desc: str):
    import sys

    from tqdm.auto import tqdm

    # In a log file (no TTY) redraw rarely, so the log stays readable.
    return tqdm(total=total, initial=initial, desc=desc, disable=not accelerator.is_local_main_process,
                dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30)


class RunState:
    """The resumable state of one stage's loop: checkpoints, the step to start from, the metrics
    log, and the periodic-save / stop_after decision. Shared by every stage so resume works the
    same everywhere."""

    def __init__(self, cfg, accelerator, run_dir: Path):
        self.cfg, self.acc = cfg, accelerator
        self.last_eval: dict = {}  # the latest evaluation's result (initial, then each one that ran)
        self.ckpts = Checkpoints(run_dir, accelerator, keep=cfg.keep_checkpoints,
                                 best_metric=getattr(cfg, "keep_best_metric", None),
                                 best_mode=getattr(cfg, "keep_best_mode", "max"))
        self.start = 0
        if cfg.resume and (latest := self.ckpts.latest()) is not None:
            self.start = self.ckpts.load(latest)["step"]
            log.info("resumed from %s at step %d", latest, self.start)
        self.metrics = MetricsLog(run_dir, accelerator, resume_step=self.start)
        self.run_dir = run_dir
        self.skipped = 0
        self.new_best_at: int | None = None  # a step whose metric beat the best checkpoint

    def initial_eval(self, evaluate, note: dict | None = None) -> dict:
        """The step-0 evaluation: run and logged on a fresh run, read back from metrics.jsonl
        on a resumed one (it was logged before the crash). ``note`` (e.g. which gold reward the run
        is monitored with) is written into that first line too, but is not part of the result."""
        if self.start == 0:
            res = evaluate()
            row = {**(note or {}), **{k: v for k, v in res.items() if not k.startswith("_")}}
            if row:
                self.metrics.log(0, row)
        else:
            step0 = next((r for r in read_metrics(self.run_dir) if r["step"] == 0), {})
            res = {k: v for k, v in step0.items() if k.startswith("eval_")}
        self.last_eval = res
        return res

    def log_step(self, done: int, n_steps: int, train_metrics: dict, evaluate) -> dict | None:
        """Write the step's metrics line when logging or evaluation is due (always at the last
        step); returns the evaluation's result when one ran."""
        row, result = {}, None
        if done % self.cfg.log_every == 0 or done == n_steps:
            row.update(train_metrics)
        if (self.cfg.eval_every and done % self.cfg.eval_every == 0) or done == n_steps:
            result = evaluate()
            row.update({k: v for k, v in result.items() if not k.startswith("_")})
        if row:
            self.metrics.log(done, row)
        if self.ckpts.observe(done, {**train_metrics, **(result or {})}):
            self.new_best_at = done
        if result:
            self.last_eval = result
        return result

    def end_step(self, bar, done: int, n_steps: int, metrics: dict, evaluate, state: dict,
                 shown: dict[str, str]) -> bool:
        """The tail every stage's step shares: advance the bar (showing ``shown``), log and evaluate
        when due, checkpoint when due. True when this invocation stops here (``stop_after``); the
        bar is then closed and the accelerator shut down, and the caller returns ``latest_dir``."""
        bar.update(1)
        bar.set_postfix(shown, refresh=False)
        self.log_step(done, n_steps, metrics, evaluate)
        if not self.after_step(done, n_steps, state):
            return False
        bar.close()
        self.acc.end_training()
        return True

    @property
    def latest_dir(self) -> Path:
        return self.run_dir / "checkpoints" / "latest"

    def finish(self, bar, n_steps: int, state: dict | None, save) -> Path:
        """The end every stage shares: close the bar, save the final checkpoint (``state``; None:
        none, e.g. after an alarm stopped the run), let the main process write the model and its
        summary (``save(final_dir)``), and shut the accelerator down. Returns ``final_dir``."""
        bar.close()
        self.acc.wait_for_everyone()
        if state is not None:
            self.ckpts.save(n_steps, state)
        final = self.run_dir / "final"
        if self.acc.is_main_process:
            save(final)
        self.acc.wait_for_everyone()
        self.acc.end_training()
        return final

    def nonfinite(self, done: int, loss: float) -> None:
        """Handle a step whose loss or gradient was not finite (its update was skipped): raise
        with the last good checkpoint named, or count a skip (``on_nonfinite: skip``)."""
        self.skipped += 1
        latest = self.ckpts.latest()
        where = (f"the last good checkpoint is {latest}" if latest
                 else "no checkpoint was saved yet (save_every)")
        if self.cfg.on_nonfinite == "stop" or self.skipped > self.cfg.max_nonfinite_skips:
            why = ("" if self.cfg.on_nonfinite == "stop"
                   else f" ({self.skipped} non-finite steps, more than max_nonfinite_skips)")
            raise TrainingError(f"step {done}: non-finite loss ({loss}) or gradient; stopped before the "
                                f"optimizer step{why}. Weights were not updated; {where}. Lower "
                                "learning_rate or check the data, then rerun with resume=true.")
        log.warning("step %d: non-finite loss (%s) or gradient; update skipped (%d of at most %d)",
                    done, loss, self.skipped, self.cfg.max_nonfinite_skips)

    def after_step(self, done: int, n_steps: int, state: dict) -> bool:
        """Save a checkpoint when due; True when this invocation should stop (``stop_after``)."""
        stop = bool(self.cfg.stop_after and done - self.start >= self.cfg.stop_after and done < n_steps)
        due = bool(self.cfg.save_every and done % self.cfg.save_every == 0)
        if stop or ((due or self.new_best_at == done) and done < n_steps):
            self.ckpts.save(done, state)
        if stop:
            log.info("stopped after %d steps at step %d; rerun with resume=true", self.cfg.stop_after, done)
        return stop


def start_run(cfg) -> tuple[Any, Path]:
    """Create the run directory, seed everything, build the Accelerator, write config.yaml."""
    from rlhfkit.config import save_config

    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    acc = make_accelerator(cfg, run_dir)
    if acc.is_main_process:
        save_config(cfg, run_dir)
    return acc, run_dir


def prepare_optimisation(cfg, acc, model, n_examples: int):
    """Optimizer, schedule and accelerate wrapping for ``n_examples`` training examples.
    Returns (model, optimizer, scheduler, n_steps, global_batch)."""
    global_batch = cfg.per_device_batch_size * cfg.gradient_accumulation_steps * acc.num_processes
    n_steps = total_steps(cfg, n_examples, global_batch, source=cfg.data)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, n_steps)
    model, optimizer, scheduler = acc.prepare(model, optimizer, scheduler)
    return model, optimizer, scheduler, n_steps, global_batch
