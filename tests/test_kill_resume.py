"""Crash safety: every stage killed with SIGKILL (by a delay, mid-checkpoint-write, right after
`latest` moved) and resumed ends bitwise equal to an uninterrupted run, with every metrics step
logged once; checkpoint retention keeps the last N plus the best by an eval metric.

The suite's small version: 2 kills per stage, 5 steps, tiny batches; `bench/kill_resume.py` runs
the 20-kill version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlhfkit.errors import ConfigError
from rlhfkit.testing.killharness import kill_and_resume, tiny_overrides, write_small_data

pytestmark = [pytest.mark.xdist_group("kill_resume"), pytest.mark.usefixtures("one_thread")]

N_STEPS = 5



@pytest.fixture(scope="module")
def small_data(world, tmp_path_factory) -> dict[str, Path]:
    return write_small_data(world, tmp_path_factory.mktemp("kill-data"))


# Every kind of kill lands on several stages (a delay is scaled by the reference run's timing).
KILLS = {"sft": ["tmp", "latest"], "reward": ["delay", "tmp"], "dpo": ["delay", "latest"],
         "ppo": ["delay", "tmp"], "grpo": ["tmp", "latest"]}


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(KILLS))
def test_sigkill_and_resume_is_bitwise_equal(stage, world, sft_model, small_data, tmp_path):
    # 'ppo' is PPO with its separate critic (value model compared too), 'grpo' the critic-free estimator.
    cli_stage, overrides = tiny_overrides(stage, world, sft_model, small_data, n_steps=N_STEPS)
    modes = KILLS[stage]
    report = kill_and_resume(cli_stage, overrides, tmp_path / "run", n_steps=N_STEPS, modes=modes,
                             seed=sum(map(ord, stage)), label=stage)
    print(report.describe())
    # Every kill lands: directory-watching ones by construction (every step is checkpointed),
    # delay ones because they fall back to the next checkpoint when this invocation runs faster
    # than the reference run did (a CI run once finished before a startup delay expired).
    assert report.kills == len(modes), report.describe()
    assert report.resumes >= report.kills
    assert not report.consistency
    assert "final/model.safetensors" in report.compared
    if stage == "ppo":  # the critic and its optimizer are compared too
        assert any(f.endswith("model_1.safetensors") for f in report.compared)
        assert any(f.endswith("optimizer_1.bin") for f in report.compared)
    assert report.mismatches == []
    assert report.metrics_problems == []


# ----------------------------------------------------------------------------- retention


def kept(run_dir: Path) -> set[int]:
    return {int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*") if p.is_dir()}


def test_retention_keeps_the_last_n_and_the_best(tmp_path):
    from accelerate import Accelerator

    from rlhfkit.train.common import Checkpoints

    torch.manual_seed(0)
    acc = Accelerator(cpu=True)
    acc.prepare(torch.nn.Linear(2, 1))
    ck = Checkpoints(tmp_path, acc, keep=2, best_metric="eval_acc", best_mode="max")
    # step: (watched value or None when not evaluated, new best?, checkpoints on disk after the save)
    plan = {1: (0.5, True, {1}), 2: (0.9, True, {1, 2}), 3: (0.7, False, {2, 3}),
            4: (None, False, {2, 3, 4}), 5: (float("nan"), False, {2, 4, 5}), 6: (0.8, False, {2, 5, 6}),
            7: (0.95, True, {6, 7})}
    for step, (value, new_best, on_disk) in plan.items():
        metrics = {"loss": 1.0} if value is None else {"loss": 1.0, "eval_acc": value}
        assert ck.observe(step, metrics) is new_best, step
        ck.save(step, {})
        assert kept(tmp_path) == on_disk, step
        assert ck.best["step"] == max((s for s in plan if s <= step and plan[s][1]))
    best = json.loads((tmp_path / "checkpoints" / "best.json").read_text())
    assert best["step"] == 7 and best["value"] == 0.95 and best["metric"] == "eval_acc"
    # The record travels with the checkpoint: loading step 6 restores the record of step 6.
    again = Checkpoints(tmp_path, acc, keep=2, best_metric="eval_acc", best_mode="max")
    again.load(tmp_path / "checkpoints" / "step-00000006")
    assert again.best["step"] == 2 and again.best["value"] == 0.9
    # min mode: smaller is better
    lo = Checkpoints(tmp_path / "min", acc, keep=1, best_metric="eval_loss", best_mode="min")
    assert lo.observe(1, {"eval_loss": 2.0})
    lo.save(1, {})
    assert not lo.observe(2, {"eval_loss": 2.5}) and lo.observe(3, {"eval_loss": 1.5})


def sft_cfg(world: Path, data: dict[str, Path], out: Path, **kw):
    from rlhfkit.config import SFTConfig

    base = {"model": str(world / "base"), "data": str(data["sft"]), "output_dir": str(out),
            "eval_fraction": 0.25, "max_steps": 4, "per_device_batch_size": 4, "learning_rate": 1e-3,
            "max_length": 64, "log_every": 1,
            "eval_every": 1, "save_every": 3, "keep_checkpoints": 1, "keep_best_metric": "eval_loss",
            "keep_best_mode": "max", "seed": 0}
    return SFTConfig(**{**base, **kw})


@pytest.mark.slow
def test_best_checkpoint_survives_pruning_and_resume(world, small_data, tmp_path):
    from rlhfkit.train.common import read_metrics
    from rlhfkit.train.sft import train

    # keep_best_mode=max on eval_loss keeps the *worst* step: an early step, so pruning with
    # keep_checkpoints=1 would delete it without the best rule.
    train(sft_cfg(world, small_data, tmp_path / "full"))
    losses = {r["step"]: r["eval_loss"] for r in read_metrics(tmp_path / "full") if r["step"] >= 1}
    best_step = max(losses, key=losses.get)
    best = json.loads((tmp_path / "full" / "checkpoints" / "best.json").read_text())
    assert best["step"] == best_step and best["value"] == pytest.approx(losses[best_step], abs=1e-6)
    assert kept(tmp_path / "full") == {best_step, 4}
    assert (Path(best["dir"]) / "model.safetensors").is_file()

    # Stopped at step 2 and resumed: the same best record and the same checkpoints on disk.
    train(sft_cfg(world, small_data, tmp_path / "split", stop_after=2))
    train(sft_cfg(world, small_data, tmp_path / "split", resume=True))
    again = json.loads((tmp_path / "split" / "checkpoints" / "best.json").read_text())
    assert (again["step"], again["value"]) == (best["step"], best["value"])
    assert kept(tmp_path / "split") == kept(tmp_path / "full")


@pytest.mark.parametrize("override, key", [({"keep_best_metric": ""}, "keep_best_metric"),
                                           ({"keep_best_mode": "median"}, "keep_best_mode")])
def test_bad_retention_config_is_named(world, override, key):
    from rlhfkit.config import SFTConfig, config_from_dict

    with pytest.raises(ConfigError, match=key):
        config_from_dict(SFTConfig, {"model": str(world / "base"), "data": "x.jsonl", **override})


@pytest.mark.slow
def test_resume_survives_a_torn_metrics_line_and_a_kill_after_the_last_save(world, small_data, tmp_path):
    import shutil

    from safetensors.torch import load_file

    from rlhfkit.train.common import read_metrics
    from rlhfkit.train.sft import train

    kw = {"eval_fraction": 0.0, "eval_every": 0, "keep_best_metric": None, "save_every": 1}
    full = train(sft_cfg(world, small_data, tmp_path / "full", **kw))
    part = tmp_path / "part"
    train(sft_cfg(world, small_data, part, stop_after=2, **kw))
    # A crash in the middle of appending step 3's line (no newline, half an object).
    with (part / "metrics.jsonl").open("a", encoding="utf-8") as f:
        f.write('{"step": 3, "loss": 1.2')
    resumed = train(sft_cfg(world, small_data, part, resume=True, **kw))
    assert [r["step"] for r in read_metrics(part)] == [1, 2, 3, 4]
    a, b = load_file(str(full / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)

    # Killed after the final checkpoint but before final/ was written: the resumed run starts
    # at the last step, must not rewrite (delete, then rename) the checkpoint `latest` names,
    # and writes the same final model.
    ckpt = part / "checkpoints" / "step-00000004" / "model.safetensors"
    stamp = (ckpt.stat().st_ino, ckpt.stat().st_mtime_ns)  # an inode number alone may be reused
    shutil.rmtree(part / "final")
    again = train(sft_cfg(world, small_data, part, resume=True, **kw))
    assert (ckpt.stat().st_ino, ckpt.stat().st_mtime_ns) == stamp
    c = load_file(str(again / "model.safetensors"))
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert [r["step"] for r in read_metrics(part)] == [1, 2, 3, 4]
