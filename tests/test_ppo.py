"""`rlhf ppo` stage: the first PPO ratio is 1, PPO / RLOO / GRPO raise the synthetic world's gold
reward over the SFT policy with the gold function as the reward, stop + resume == uninterrupted
(bitwise), and the KL alarm stops a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.config import PPOConfig, config_from_dict
from rlhfkit.errors import ConfigError
from rlhfkit.train.common import read_metrics
from rlhfkit.train.ppo import train

# One worker runs the whole file, so the SFT model is built once.
pytestmark = [pytest.mark.xdist_group("ppo"), pytest.mark.usefixtures("one_thread")]



def cfg_for(world: Path, sft_model: Path, out: Path, **kw) -> PPOConfig:
    base = {"model": str(sft_model), "data": str(world / "prompts.jsonl"),
            "eval_data": str(world / "prompts_eval.jsonl"),
            "output_dir": str(out), "reward_functions": ["gold"],
            "gold": "synthetic", "learning_rate": 5e-4, "prompts_per_device": 32, "mini_batch_size": 16,
            "ppo_epochs": 2, "max_new_tokens": 32, "max_length": 96, "max_steps": 8, "log_every": 1,
            "eval_prompts": 64, "eval_num_samples": 4, "seed": 0}
    base.update(kw)
    return PPOConfig(**base)


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(model_dir) / "model.safetensors"))


def summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


@pytest.fixture(scope="module")
def ppo_run(world, sft_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ppo")
    # 20 steps: the substance gold (an opinion counts fully only about an aspect of the item) is
    # slower to climb than sentiment alone; over seeds 0-3 the gold gain was 0.10-0.20 with 12 steps
    # (0.09-0.26 at lr 1e-3) and 0.24-0.38 with 20.
    train(cfg_for(world, sft_model, out, max_steps=20))
    return out


def test_config_needs_a_reward_and_k_for_rloo(world, sft_model):
    base = {"model": str(sft_model), "data": str(world / "prompts.jsonl")}
    with pytest.raises(ConfigError, match="reward"):
        config_from_dict(PPOConfig, base)
    with pytest.raises(ConfigError, match="num_samples"):
        config_from_dict(PPOConfig, {**base, "reward_functions": ["gold"], "estimator": "rloo",
                                     "num_samples": 1})
    with pytest.raises(ConfigError, match="module:function"):
        config_from_dict(PPOConfig, {**base, "reward_functions": ["not a function"]})
    assert config_from_dict(PPOConfig, {**base, "reward_functions": ["gold"],
                                        "estimator": "grpo"}).samples_per_prompt == 4
    from rlhfkit.cli import STAGES
    assert STAGES["ppo"].config == "PPOConfig"


def test_first_minibatch_ratio_is_one(ppo_run):
    rows = [r for r in read_metrics(ppo_run) if "first_ratio" in r]
    assert len(rows) == 20
    for r in rows:  # every step: temperature-scaled training log-probs == the rollout's
        assert abs(r["first_ratio"] - 1.0) < 1e-5
        assert r["first_approx_kl"] < 1e-8
        assert r["first_clipfrac"] == 0.0
    assert rows[0]["seq_kl"] == pytest.approx(0.0, abs=1e-5)  # step 1: the policy is the reference


def test_ppo_raises_gold_reward_with_bounded_kl(ppo_run):
    s = summary(ppo_run)
    gain = s["final_eval_gold"] - s["initial_eval_gold"]
    assert gain > 0.15, s  # measured 0.24 (seed 0); 0.24-0.38 over seeds 0-3
    assert 0.0 < s["final_eval_seq_kl"] < 15.0, s
    rows = read_metrics(ppo_run)
    for key in ("seq_kl", "approx_kl", "clipfrac", "entropy", "response_length", "distinct_2",
                "proxy_reward", "gold_reward", "proxy_gold_gap", "vf_loss", "kl_coef"):
        assert key in rows[1], key
    assert (ppo_run / "final" / "model.safetensors").is_file()
    assert (ppo_run / "best" / "model.safetensors").is_file() and s["best"]["step"] is not None


@pytest.mark.parametrize("estimator,extra", [("rloo", {}), ("grpo", {"kl_in": "loss"})])
def test_critic_free_estimators_raise_gold_reward(world, sft_model, tmp_path, estimator, extra):
    cfg = cfg_for(world, sft_model, tmp_path, estimator=estimator, prompts_per_device=8,
                  max_steps=20, **extra)
    train(cfg)
    s = summary(tmp_path)
    assert s["samples_per_prompt"] == 4 and s["critic"] is None
    rows = [r for r in read_metrics(tmp_path) if "pg_loss" in r]
    assert all(torch.isfinite(torch.tensor(r["pg_loss"])) for r in rows)
    # measured RLOO 0.29-0.62, GRPO 0.46-0.82 over seeds 0-3 (20 steps; with 10, RLOO's seed 0 gained
    # only 0.03 on the substance gold)
    assert s["final_eval_gold"] - s["initial_eval_gold"] > 0.2, s


def test_grpo_one_update_reuses_its_forward_and_matches_the_rollout_logprobs_path(world, sft_model, tmp_path,
                                                                                  monkeypatch):
    """One update over one minibatch with the KL in the loss skips the rollout's policy forward
    (``reuses_update_logprobs``); forcing the rollout forward back gives the same run to float
    error: the same logged sequence KL every step and the same final weights."""
    import rlhfkit.train.ppo as ppo_mod

    kw = {"estimator": "grpo", "kl_in": "loss", "prompts_per_device": 8, "mini_batch_size": 32,
          "ppo_epochs": 1, "max_steps": 3, "eval_prompts": 0}
    cfg = cfg_for(world, sft_model, tmp_path / "reuse", **kw)
    assert ppo_mod.reuses_update_logprobs(cfg, 1)
    assert not ppo_mod.reuses_update_logprobs(cfg, 2)
    assert not ppo_mod.reuses_update_logprobs(
        cfg_for(world, sft_model, tmp_path, **{**kw, "kl_in": "reward"}), 1)
    reuse = train(cfg)
    monkeypatch.setattr(ppo_mod, "reuses_update_logprobs", lambda cfg, n: False)
    plain = train(cfg_for(world, sft_model, tmp_path / "plain", **kw))
    a, b = read_metrics(tmp_path / "reuse"), read_metrics(tmp_path / "plain")
    kl_a = [r["seq_kl"] for r in a if "seq_kl" in r]
    kl_b = [r["seq_kl"] for r in b if "seq_kl" in r]
    assert len(kl_a) == 3 and kl_a == pytest.approx(kl_b, abs=1e-4)
    assert kl_a[-1] > 1e-3  # the policy moved, so the comparison is not 0 == 0
    assert [r["first_ratio"] for r in a if "first_ratio" in r] == pytest.approx([1.0] * 3, abs=1e-6)
    wa, wb = weights(reuse), weights(plain)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_resume_after_stop_after_is_bitwise_equal(world, sft_model, tmp_path):
    kw = {"max_steps": 4, "prompts_per_device": 8, "ppo_epochs": 2, "eval_prompts": 0, "kl_target": 1.0,
          "kl_horizon": 100.0}
    full = train(cfg_for(world, sft_model, tmp_path / "full", **kw))
    part = tmp_path / "part"
    train(cfg_for(world, sft_model, part, stop_after=2, **kw))
    assert not (part / "final").exists()
    resumed = train(cfg_for(world, sft_model, part, resume=True, **kw))
    a, b = weights(full), weights(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert summary(tmp_path / "full")["final_kl_coef"] == summary(part)["final_kl_coef"] != 0.05
    steps = [r["step"] for r in read_metrics(part) if "seq_kl" in r]
    assert steps == [1, 2, 3, 4]


def test_kl_alarm_stops_the_run(world, sft_model, tmp_path):
    train(cfg_for(world, sft_model, tmp_path, max_steps=6, prompts_per_device=8, ppo_epochs=2,
                  eval_prompts=0, max_kl=1e-4, kl_alarm="stop"))
    s = summary(tmp_path)
    assert s["stopped_by_alarm"] and s["alarm"]["action"] == "stop"
    assert s["steps_done"] < 6 and s["alarm"]["seq_kl"] > 1e-4
    assert (tmp_path / "best" / "model.safetensors").is_file()
    assert (tmp_path / "checkpoints" / "latest").is_file()
    assert read_metrics(tmp_path)[-1].get("alarm_kl") == 1


@pytest.fixture(scope="module")
def learned_rm(world, sft_model, tmp_path_factory) -> Path:
    """A reward model trained on simulated preferences over the SFT policy's samples (6 per prompt,
    6 labelled pairs per prompt, near-noiseless labeler): the proxy the RL tests optimise."""
    from rlhfkit.config import RewardConfig
    from rlhfkit.synthetic.preferences import preference_splits
    from rlhfkit.train.reward import train as rm_train

    root = tmp_path_factory.mktemp("rm")
    prefs = preference_splits(sft_model, world, root / "prefs", samples_per_prompt=6, pairs_per_prompt=6,
                              seed=1)
    return rm_train(RewardConfig(model=str(sft_model), data=str(prefs["train"]), eval_data=str(prefs["eval"]),
                                 output_dir=str(root / "rm"), learning_rate=1e-3, per_device_batch_size=16,
                                 num_epochs=2, max_length=96, log_every=10, warmup_ratio=0.05, seed=0))


# 20 steps each: on the substance gold, 10-12 steps gained -0.02-0.19 (PPO) and 0.07 (RLOO, seeds
# 0-1); with 20, the gold gain over seeds 0-3 was PPO 0.17-0.31, RLOO 0.21-0.36, GRPO 0.18-0.28
# (proxy gains 1.0-1.8): the thresholds sit below each minimum.
@pytest.mark.parametrize("estimator,extra,min_gain", [
    ("ppo", {}, 0.1),  # measured gold -0.07 -> 0.23, proxy +1.60, KL 3.3 (seed 0)
    ("rloo", {"prompts_per_device": 8}, 0.12),  # measured -0.07 -> 0.29, KL 4.7
    ("grpo", {"prompts_per_device": 8, "kl_in": "loss"}, 0.1),  # measured -0.07 -> 0.12, KL 3.8
])
def test_rl_with_a_learned_reward_model_raises_gold(world, sft_model, learned_rm, tmp_path, estimator, extra,
                                                    min_gain):
    """The real setting: the reward is a reward model trained on simulated preferences (stored
    offset applied; for PPO the critic is initialised from it); gold is only monitored."""
    out = tmp_path / estimator
    train(cfg_for(world, sft_model, out, reward_functions=[], reward_model=str(learned_rm),
                  estimator=estimator, max_steps=20, **extra))
    s = summary(out)
    assert s["critic"] == (str(learned_rm) if estimator == "ppo" else None)
    assert s["final_eval_proxy"] - s["initial_eval_proxy"] > 0.3, s
    assert s["final_eval_gold"] - s["initial_eval_gold"] > min_gain, s
    assert s["final_eval_seq_kl"] < 15.0, s
    first = read_metrics(out)[1]
    assert abs(first["first_ratio"] - 1.0) < 1e-5 and first["first_clipfrac"] == 0.0
    assert "proxy_gold_gap" in first


@pytest.mark.slow
def test_two_processes_run_and_resume_exactly(world, sft_model, tmp_path):
    """Through the CLI with 2 gloo processes: a stop_after + resume run ends with the same weights, bit for
    bit, as an uninterrupted one (per-process RNG, critic, optimizers and KL controller all restored)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    accelerate = str(Path(sys.executable).parent / "accelerate")
    common = [f"model={sft_model}", f"data={world / 'prompts.jsonl'}", "reward_functions=[gold]",
              "max_steps=3", "prompts_per_device=8", "mini_batch_size=8", "max_new_tokens=24",
              "log_every=1", "learning_rate=5e-4", "kl_target=1.0", "kl_horizon=100", "eval_prompts=0"]

    def launch(out: Path, *extra: str) -> None:
        res = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2",
                              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                              "--main_process_port", "0",
                              "-m", "rlhfkit", "--quiet", "ppo", *common, f"output_dir={out}", *extra],
                             env=env, capture_output=True, text=True, timeout=600, check=False)
        assert res.returncode == 0, res.stderr[-3000:]

    launch(tmp_path / "full")
    launch(tmp_path / "part", "stop_after=2")
    launch(tmp_path / "part", "resume=true")
    assert summary(tmp_path / "part")["processes"] == 2
    a, b = weights(tmp_path / "full" / "final"), weights(tmp_path / "part" / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [r for r in read_metrics(tmp_path / "part") if "first_ratio" in r]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(abs(r["first_ratio"] - 1) < 1e-5 for r in rows)


def length_reward(prompts, completions):
    """A hackable proxy: longer is better. Gold penalises long, unterminated text."""
    return [float(len(c.split())) / 10 for c in completions]


def test_gap_alarm_rule_by_hand():
    from rlhfkit.train.ppo import gap_widening

    assert gap_widening([0.1, 0.2, 0.3], 2) and not gap_widening([0.1, 0.3, 0.2], 2)
    assert not gap_widening([0.1, 0.2], 2) and not gap_widening([0.1, 0.2, 0.3], 0)


def test_gap_alarm_stops_a_hacked_run(world, sft_model, tmp_path):
    # 32 prompts a step: with 8 the proxy is too noisy to widen the gap twice in a row before the
    # hack takes off (measured gaps 1.04, 1.14, 1.02, 1.50, 2.39 -> stop at step 5, seed 0).
    train(cfg_for(world, sft_model, tmp_path, reward_functions=["test_ppo:length_reward"], max_steps=12,
                  prompts_per_device=32, eval_prompts=0, gold="synthetic", gap_alarm_steps=2,
                  gap_alarm="stop", kl_coef=0.0))
    s = summary(tmp_path)
    rows = [r for r in read_metrics(tmp_path) if "proxy_gold_gap" in r]
    assert s["stopped_by_alarm"] and s["alarm"]["widening_steps"] == 2, s.get("alarm")
    gaps = [r["proxy_gold_gap"] for r in rows]
    assert gaps[-1] > gaps[-2] > gaps[-3] and rows[-1].get("alarm_gap") == 1


def test_policy_head_critic_trains_and_saves_a_plain_policy(world, sft_model, tmp_path):
    from transformers import AutoModelForCausalLM

    final = train(cfg_for(world, sft_model, tmp_path, critic="policy_head", max_steps=20))
    s = summary(tmp_path)
    assert s["critic"] == "policy_head"
    rows = [r for r in read_metrics(tmp_path) if "first_ratio" in r]
    assert len(rows) == 20
    for r in rows:  # one forward gives logits and values: the ratio is still 1 on the first minibatch
        assert abs(r["first_ratio"] - 1.0) < 1e-5 and r["first_clipfrac"] == 0.0
        assert torch.isfinite(torch.tensor(r["vf_loss"]))
    assert rows[-1]["vf_loss"] < rows[0]["vf_loss"]  # measured 0.233 -> 0.056 (seed 0)
    # measured 0.65 (seed 0); 0.27-0.65 over seeds 0-3 (20 steps; 8 gave 0.18 at seed 0)
    assert s["final_eval_gold"] - s["initial_eval_gold"] > 0.2, s
    assert not any("v_head" in k for k in weights(final))
    AutoModelForCausalLM.from_pretrained(final)  # plain transformers loads it


def test_policy_head_resume_is_bitwise_equal(world, sft_model, tmp_path):
    kw = {"max_steps": 3, "prompts_per_device": 8, "ppo_epochs": 2, "eval_prompts": 0,
          "critic": "policy_head", "max_new_tokens": 16}
    full = train(cfg_for(world, sft_model, tmp_path / "full", **kw))
    part = tmp_path / "part"
    train(cfg_for(world, sft_model, part, stop_after=2, **kw))
    resumed = train(cfg_for(world, sft_model, part, resume=True, **kw))
    a, b = weights(full), weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    va = [r["vf_loss"] for r in read_metrics(tmp_path / "full") if "vf_loss" in r]
    vb = [r["vf_loss"] for r in read_metrics(part) if "vf_loss" in r]
    assert va == vb  # the head (in the checkpoint) continued exactly too


def test_lora_ppo_uses_the_disabled_adapter_as_reference(world, sft_model, tmp_path, monkeypatch):
    from rlhfkit.train import ppo

    loads = []
    original = ppo.load_causal_lm
    monkeypatch.setattr(ppo, "load_causal_lm", lambda *a, **kw: loads.append(a[0]) or original(*a, **kw))
    final = train(cfg_for(world, sft_model, tmp_path, lora_r=4, max_steps=2, prompts_per_device=8,
                          eval_prompts=0, max_new_tokens=16))
    assert len(loads) == 1  # one copy of the base weights: no frozen reference copy
    s = summary(tmp_path)
    assert s["reference"] == "adapter disabled"
    rows = [r for r in read_metrics(tmp_path) if "first_ratio" in r]
    assert rows and abs(rows[0]["first_ratio"] - 1.0) < 1e-5
    assert rows[0]["seq_kl"] == pytest.approx(0.0, abs=1e-5)
    assert not any("lora" in k for k in weights(final))


def test_collapse_alarm_fires_on_a_collapsing_run_and_not_on_a_healthy_one(world, sft_model, tmp_path):
    """Item 34. With the gold reward and a weak KL penalty the policy converges on a few generic
    answers (measured, seed 1: collapse ratio 1.0 -> 0.44 at step 6 -> 0.19, gold still rising): the
    alarm stops it. With kl_coef 0.5 the same run stays diverse (ratio >= 0.64 over seeds 0-2)."""
    collapsing = tmp_path / "collapsing"
    train(cfg_for(world, sft_model, collapsing, seed=1, max_steps=12, eval_prompts=0, collapse_alarm="stop"))
    s = summary(collapsing)
    assert s["stopped_by_alarm"] and s["alarm"]["kind"] == "collapse", s["alarm"]
    assert s["alarms_fired"]["collapse"] == s["steps_done"] < 12
    rows = [r for r in read_metrics(collapsing) if "collapse_ratio" in r]
    assert (rows[0]["collapse_ratio"] == 1.0 and rows[-1]["collapse_ratio"] < 0.5
            and rows[-1]["alarm_collapse"] == 1)
    assert rows[-1]["cross_prompt_similarity"] > rows[0]["cross_prompt_similarity"]  # answers converge

    healthy = tmp_path / "healthy"
    train(cfg_for(world, sft_model, healthy, seed=1, max_steps=8, eval_prompts=0, kl_coef=0.5,
                  collapse_alarm="stop"))
    s = summary(healthy)
    assert s["alarms_fired"] == {} and not s["stopped_by_alarm"] and s["steps_done"] == 8
    assert min(r["collapse_ratio"] for r in read_metrics(healthy) if "collapse_ratio" in r) > 0.5
