"""mixed_precision: bf16 on CPU (fp32 master weights, bf16-autocast forwards, fp32 losses): a few
steps of SFT, reward and DPO stay within a stated tolerance of the fp32 run, and the RL stage keeps
its first PPO ratio at 1 (rollout, reference and training forward under the same autocast)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from rlhfkit.config import DPOConfig, PPOConfig, RewardConfig, SFTConfig
from rlhfkit.errors import ConfigError
from rlhfkit.train.common import read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")

# Largest relative |bf16 - fp32| of a step's training loss or a held-out loss over 4 steps, measured
# on the test world on this machine's CPU (AMD EPYC, no native bf16): SFT 2.7e-4, reward 2.6e-3,
# DPO 1.5e-3 (the first step: 5e-5, 7e-4, 0). bf16 keeps 8 bits of mantissa (relative rounding 2^-9
# per element); the summed losses average most of it out, and the runs drift apart as the updates
# differ. 2e-2 leaves about 8x margin. A forward that falls out of autocast is caught exactly
# instead: DPO's step-0 loss is log 2 and PPO's first ratio 1 only when policy and reference (or
# rollout) share the precision.
REL_TOL = 2e-2


def losses(run_dir: Path) -> tuple[list[float], list[float]]:
    rows = read_metrics(run_dir)
    return ([r["loss"] for r in rows if "loss" in r],
            [r["eval_loss"] for r in rows if "eval_loss" in r])


def assert_close_runs(fp32: Path, bf16: Path) -> None:
    (train32, eval32), (train16, eval16) = losses(fp32), losses(bf16)
    assert len(train32) == len(train16) >= 3 and len(eval32) == len(eval16) >= 2
    for a, b in zip(train32 + eval32, train16 + eval16):
        assert math.isfinite(b)
        assert abs(a - b) <= REL_TOL * abs(a), (train32, train16, eval32, eval16)


def test_sft_bf16_tracks_fp32(world, tmp_path):
    from rlhfkit.train.sft import train

    for mp in ("no", "bf16"):
        train(SFTConfig(model=str(world / "base"), data=str(world / "sft.jsonl"),
                        eval_data=str(world / "sft_eval.jsonl"), output_dir=str(tmp_path / mp),
                        mixed_precision=mp, learning_rate=1e-3, per_device_batch_size=8, max_steps=4,
                        max_length=64, log_every=1, warmup_ratio=0.0, lr_scheduler="constant", seed=3))
    assert_close_runs(tmp_path / "no", tmp_path / "bf16")


@pytest.fixture(scope="module")
def prefs(world, sft_model, tmp_path_factory) -> dict[str, Path]:
    from rlhfkit.synthetic.preferences import preference_splits

    return preference_splits(sft_model, world, tmp_path_factory.mktemp("prefs"), seed=1)


def test_reward_bf16_tracks_fp32(sft_model, prefs, tmp_path):
    from rlhfkit.train.reward import train

    for mp in ("no", "bf16"):
        train(RewardConfig(model=str(sft_model), data=str(prefs["train"]), eval_data=str(prefs["eval"]),
                           output_dir=str(tmp_path / mp), mixed_precision=mp, learning_rate=2e-4,
                           per_device_batch_size=8, max_steps=4, max_length=96, log_every=1,
                           warmup_ratio=0.0, lr_scheduler="constant", normalize_samples=64, seed=3))
    assert_close_runs(tmp_path / "no", tmp_path / "bf16")


def test_dpo_bf16_tracks_fp32(sft_model, prefs, tmp_path):
    from rlhfkit.train.dpo import train

    for mp in ("no", "bf16"):
        train(DPOConfig(model=str(sft_model), data=str(prefs["train"]), eval_data=str(prefs["eval"]),
                        output_dir=str(tmp_path / mp), mixed_precision=mp, learning_rate=5e-4,
                        per_device_batch_size=8, max_steps=4, max_length=96, log_every=1, warmup_ratio=0.0,
                        lr_scheduler="constant", seed=3, eval_sample_prompts=0))
    assert_close_runs(tmp_path / "no", tmp_path / "bf16")
    # The reference is under the policy's autocast too: before any update the two agree exactly.
    assert read_metrics(tmp_path / "bf16")[0]["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)


@pytest.mark.parametrize("extra", [{}, {"critic": "policy_head"},
                                   {"estimator": "grpo", "kl_in": "loss", "ppo_epochs": 1,
                                    "mini_batch_size": 64, "num_samples": 4}],
                         ids=["ppo", "policy_head", "grpo_reused_logprobs"])
def test_rl_bf16_first_ratio_is_one(world, sft_model, tmp_path, extra):
    """Rollout log-probs, the reference and the first training forward all run under bf16 autocast:
    the first minibatch's ratio is 1 and the first rollout's KL to the (identical) reference 0.
    Before the rollout was autocast explicitly, `critic: policy_head` gave a first ratio of 0.998
    (accelerate patched only the wrapper's forward) and an fp32 reference a first KL of 7e-4."""
    from rlhfkit.train.ppo import train

    cfg = {"model": str(sft_model), "data": str(world / "prompts.jsonl"),
           "eval_data": str(world / "prompts_eval.jsonl"), "output_dir": str(tmp_path),
           "reward_functions": ["gold"], "gold": "synthetic", "learning_rate": 5e-4,
           "prompts_per_device": 16, "mini_batch_size": 8, "ppo_epochs": 2, "max_new_tokens": 24,
           "max_length": 96, "max_steps": 3, "log_every": 1, "eval_prompts": 8, "seed": 0,
           "mixed_precision": "bf16", **extra}
    train(PPOConfig(**cfg))
    rows = read_metrics(tmp_path)
    steps = [r for r in rows if "first_ratio" in r]
    assert len(steps) == 3
    for r in steps:  # every step's first minibatch: old log-probs come from the same weights
        assert r["first_ratio"] == pytest.approx(1.0, abs=1e-5), r
        assert abs(r["first_approx_kl"]) <= 1e-6 and r["first_clipfrac"] == 0.0, r
        assert all(math.isfinite(v) for v in r.values() if isinstance(v, float)), r
    assert steps[0]["seq_kl"] == pytest.approx(0.0, abs=1e-6)  # policy == reference before any update
    assert rows[0]["eval_seq_kl"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.skipif(torch.accelerator.is_available(), reason="fp16 autocast is for GPUs")
def test_fp16_on_cpu_is_refused_naming_the_field(world, tmp_path):
    from rlhfkit.train.sft import train

    cfg = SFTConfig(model=str(world / "base"), data=str(world / "sft.jsonl"), output_dir=str(tmp_path),
                    mixed_precision="fp16", max_steps=1)
    with pytest.raises(ConfigError, match="mixed_precision: 'fp16'.*bf16"):
        train(cfg)
