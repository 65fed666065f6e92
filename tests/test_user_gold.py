"""The user's own gold (rlhfkit/gold.py): `gold:` is 'synthetic', 'module:function' or a reward-model
directory in `evaluate`, `ppo` (monitored), `dpo` (sampled evaluation) and the pipeline.

- resolve_gold: the synthetic gold is gold_reward_fn; plain and TRL-style functions both work; a
  reward-model directory scores with its stored offset / scale; every bad result or failure is a
  ConfigError naming the spec and what was wrong;
- config: the old boolean keys fail with the new key named, a spec that is none of the three forms
  or a missing directory fails at load, the --help text states the signature;
- evaluate_policies, PPO and DPO with a user function: the numbers logged are that function's mean
  over the very texts it was given.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import _user_gold
import numpy as np
import pytest
import torch

from rlhfkit.config import (DPOConfig, EvaluateConfig, EvaluateSection, PipelineConfig, PPOConfig,
                            config_from_dict, describe_fields)
from rlhfkit.errors import ConfigError
from rlhfkit.gold import describe_gold, resolve_gold
from rlhfkit.train.common import read_metrics

pytestmark = [pytest.mark.xdist_group("user_gold"), pytest.mark.usefixtures("one_thread")]

PROMPTS = ["review of the film lost river :", "review of the kettle :"]
COMPLETIONS = [" the film was good .", " the kettle was bad . it leaked ."]
SIGNATURE = "(prompts, completions) -> list[float]"


@pytest.fixture(autouse=True)
def _fresh_calls():
    _user_gold.CALLS.clear()
    yield
    _user_gold.CALLS.clear()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]


# ----------------------------------------------------------------------------- resolve_gold


def test_no_gold_and_the_synthetic_gold(world):
    from rlhfkit.synthetic.gold import gold_reward_fn

    assert resolve_gold(None) is None and describe_gold(None) is None
    rows = read_jsonl(world / "sft.jsonl")[:20]
    prompts, completions = [r["prompt"] for r in rows], [r["completion"] for r in rows]
    assert resolve_gold("synthetic")(prompts, completions) == gold_reward_fn(prompts, completions)
    assert describe_gold("synthetic") == "synthetic world gold"


def test_plain_and_trl_style_functions():
    assert resolve_gold("_user_gold:words")(PROMPTS, COMPLETIONS) == [0.5, 0.8]  # words / 10
    assert _user_gold.CALLS == [(PROMPTS, COMPLETIONS)]
    expected = [float(len(c)) + 0.5 * len(p) for p, c in zip(PROMPTS, COMPLETIONS)]
    assert resolve_gold("_user_gold:trl_style")(PROMPTS, COMPLETIONS) == expected
    lengths = [float(len(c)) for c in COMPLETIONS]
    assert resolve_gold("_user_gold:completions_only")(PROMPTS, COMPLETIONS) == lengths
    scores = resolve_gold("_user_gold:as_array")(PROMPTS, COMPLETIONS)  # numpy results become floats
    assert scores == [0.0, 1.0] and all(type(s) is float for s in scores)
    assert describe_gold("_user_gold:words") == "_user_gold:words"


@pytest.mark.parametrize("name,match", [
    ("wrong_length", r"gold '_user_gold:wrong_length' returned 3 scores for 2 completions"),
    ("nan", r"gold '_user_gold:nan' returned nan at index 1; gold scores must be finite"),
    ("a_string", r"gold '_user_gold:a_string' returned a non-number at index 0: 'good' \(str\)"),
    ("a_scalar", r"gold '_user_gold:a_scalar' returned 1.0 \(float\), not a list of 2 floats"),
    ("raises", r"gold '_user_gold:raises' raised RuntimeError: the judge is down \(at .*_user_gold\.py:\d+ "
               r"in raises\)"),
])
def test_a_bad_result_names_the_spec_and_what_was_wrong(name, match):
    gold = resolve_gold(f"_user_gold:{name}")  # resolving works: the function is only wrong when called
    with pytest.raises(ConfigError, match=match):
        gold(PROMPTS, COMPLETIONS)


@pytest.mark.parametrize("spec,match", [
    ("no_such_module_xyz:score",
     r"gold 'no_such_module_xyz:score': cannot import module 'no_such_module_xyz'"),
    ("_user_gold:nope", r"gold '_user_gold:nope': module '_user_gold' has no attribute 'nope'"),
    ("_user_gold:NOT_A_FUNCTION", r"'NOT_A_FUNCTION' is not callable \(it is 3 \(int\)\)"),
    ("_user_gold:one_arg",
     r"'one_arg\(texts\)' cannot be called as one_arg\(prompts=\.\.\., completions=\.\.\.\)"),
    ("nonsense", r"gold must be 'synthetic', 'module:function' .*'nonsense' is none of them"),
])
def test_a_gold_that_cannot_be_loaded_is_named(spec, match):
    with pytest.raises(ConfigError, match=match):
        resolve_gold(spec)


def tiny_reward_model(world: Path, out: Path, offset: float, scale: float) -> Path:
    """An untrained reward model (the world's base LM + a fresh head) with a stored normalisation:
    what `rlhf reward` writes, minus the training."""
    from rlhfkit.modeling import load_reward_model, load_tokenizer, save_hf

    torch.manual_seed(0)
    tok = load_tokenizer(str(world / "base"))
    return save_hf(load_reward_model(str(world / "base"), tok), tok, out,
                   extra_config={"reward_offset": offset, "reward_scale": scale})


def test_a_reward_model_directory_is_a_held_out_judge(world, tmp_path):
    from rlhfkit.scoring import RewardScorer

    rm = tiny_reward_model(world, tmp_path / "judge", offset=0.75, scale=2.0)
    scores = resolve_gold(str(rm), max_length=96)(PROMPTS, COMPLETIONS)
    scorer = RewardScorer(rm, max_length=96)
    assert scores == scorer.score(PROMPTS, COMPLETIONS)[0].tolist()
    raw = scorer.score(PROMPTS, COMPLETIONS, normalized=False)[0]
    np.testing.assert_allclose(scores, (raw - 0.75) / 2.0, rtol=1e-6)  # the stored normalisation applied
    assert describe_gold(str(rm)) == f"reward model {rm} (held-out judge)"
    with pytest.raises(ConfigError, match=re.escape(f"gold '{tmp_path}': cannot load the reward model")):
        resolve_gold(str(tmp_path))  # a directory that holds no model


# ----------------------------------------------------------------------------- config


def test_the_old_boolean_keys_name_the_new_one(sft_model, world):
    base = {"model": str(sft_model), "data": str(world / "prompts.jsonl"), "reward_functions": ["gold"]}
    new = r"gold_reward: use gold: synthetic \(or module:function, or a reward-model directory\)"
    with pytest.raises(ConfigError, match=new):
        config_from_dict(PPOConfig, {**base, "gold_reward": True})
    with pytest.raises(ConfigError, match=new):
        config_from_dict(DPOConfig, {"model": str(sft_model), "data": "d.jsonl", "gold_reward": True})
    with pytest.raises(ConfigError, match="rl.g.gold_reward: use gold: synthetic"):
        config_from_dict(PipelineConfig, {"policy": str(sft_model), "collect": {"prompts": "p.jsonl"},
                                          "rl": {"g": {"reward_functions": ["gold"], "gold_reward": True}}})
    with pytest.raises(ConfigError, match=r"gold.*true/false is no longer a value: use gold: synthetic"):
        config_from_dict(PPOConfig, base, {"gold": True})
    with pytest.raises(ConfigError, match=r"evaluate.gold.*true/false is no longer a value"):
        config_from_dict(PipelineConfig, {"policy": str(sft_model), "collect": {"prompts": "p.jsonl"},
                                          "rl": {"g": {"reward_functions": ["gold"]}},
                                          "evaluate": {"gold": False}})


def test_gold_specs_are_checked_at_load(sft_model, world, tmp_path):
    base = {"model": str(sft_model), "data": str(world / "prompts.jsonl"), "reward_functions": ["gold"]}
    ev = {"policies": {"sft": str(sft_model)}, "prompts": str(world / "prompts_eval.jsonl")}
    dpo = {"model": str(sft_model), "data": "d.jsonl"}
    for cls, values in ((PPOConfig, base), (DPOConfig, dpo), (EvaluateConfig, ev)):
        with pytest.raises(ConfigError, match=r"gold \[command line\]: .*gold must be 'synthetic', "
                                              r"'module:function'.*'nonsense' is none of them"):
            config_from_dict(cls, values, {"gold": "nonsense"})
        with pytest.raises(ConfigError, match=r"gold \[command line\]: .*'/missing/dir' does not exist"):
            config_from_dict(cls, values, {"gold": "/missing/dir"})
        with pytest.raises(ConfigError, match=r"gold .*is a file, not a reward-model directory"):
            config_from_dict(cls, values, {"gold": str(world / "prompts.jsonl")})
        with pytest.raises(ConfigError, match=r"gold .*has no config.json: not a reward-model directory"):
            config_from_dict(cls, values, {"gold": str(tmp_path)})
        for spec in ("synthetic", "_user_gold:words", str(sft_model), None):
            assert config_from_dict(cls, values, {"gold": spec}).gold == spec
    assert config_from_dict(PPOConfig, base).gold is None and config_from_dict(DPOConfig, dpo).gold is None
    assert config_from_dict(EvaluateConfig, ev).gold == "synthetic"  # what `rlhf evaluate` always did


def gold_help(cls) -> str:
    """The --help entry of `gold`: its key line and its docstring line."""
    lines = describe_fields(cls).splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith("  gold ("))
    return " ".join(lines[i:i + 2])


def test_help_states_the_signature_and_that_ppo_only_monitors():
    for cls in (PPOConfig, DPOConfig, EvaluateConfig, EvaluateSection):
        text = gold_help(cls)
        assert SIGNATURE in text and "**kwargs" in text and "reward-model directory" in text, (cls, text)
    assert "never trained on" in gold_help(PPOConfig)


def test_the_pipeline_passes_evaluate_gold_to_the_evaluation(world, sft_model, tmp_path):
    from rlhfkit.demo import demo_pipeline
    from rlhfkit.pipeline import build_plan

    spec = {"output_dir": str(tmp_path / "p"), "policy": str(sft_model),
            "collect": {"prompts": str(world / "prompts.jsonl")},
            "rl": {"g": {"estimator": "grpo", "reward_functions": ["gold"], "gold": "_user_gold:words"}},
            "evaluate": {"prompts": str(world / "prompts_eval.jsonl"), "gold": "_user_gold:words"}}

    def plan(**kw):
        p = build_plan(config_from_dict(PipelineConfig, {**spec, **kw}))
        return {s.key: s for s in p.steps}

    steps = plan()
    assert steps["evaluate"].config["gold"] == "_user_gold:words"
    assert steps["round1/rl-g"].config.gold == "_user_gold:words"
    assert plan(evaluate={"prompts": str(world / "prompts_eval.jsonl")})["evaluate"].config["gold"] is None
    assert plan(evaluate={"gold": str(sft_model)})["evaluate"].config["gold"] == str(sft_model)
    with pytest.raises(ConfigError, match=r"pipeline section 'evaluate': gold must be .*'nonsense'"):
        plan(evaluate={"gold": "nonsense"})
    with pytest.raises(ConfigError, match=r"(?s)pipeline section 'rl.g': .*gold.*'nonsense' is none of them"):
        plan(rl={"g": {"estimator": "grpo", "reward_functions": ["gold"], "gold": "nonsense"}})
    # With a `world` section the default is the synthetic world's gold; `${world}` paths resolve.
    demo = build_plan(config_from_dict(PipelineConfig, demo_pipeline(tmp_path / "demo", quick=True)))
    assert {s.key: s for s in demo.steps}["evaluate"].config["gold"] == "synthetic"
    demo_spec = demo_pipeline(tmp_path / "demo", quick=True)
    demo_spec["evaluate"]["gold"] = "${world}/base"  # a directory the plan makes
    demo = build_plan(config_from_dict(PipelineConfig, demo_spec))
    assert {s.key: s for s in demo.steps}["evaluate"].config["gold"] == str(tmp_path / "demo/world/base")


# ----------------------------------------------------------------------------- the stages


def test_evaluate_policies_with_a_user_gold(world, sft_model):
    from rlhfkit.evaluate.policies import evaluate_policies

    prompts = [r["prompt"] for r in read_jsonl(world / "prompts_eval.jsonl")][:8]
    torch.manual_seed(0)
    ev = evaluate_policies({"base": world / "base", "sft": sft_model}, prompts, reference="sft",
                           gold="_user_gold:words", max_new_tokens=24, seed=3)
    assert ev["gold"] == "_user_gold:words"
    calls = dict(zip(("base", "sft"), _user_gold.CALLS))  # one call per policy, in order
    assert len(_user_gold.CALLS) == 2
    for name, (given_prompts, completions) in calls.items():
        m = ev["policies"][name]
        assert given_prompts == prompts and len(completions) == len(prompts)
        assert m["gold_mean"] == float(np.mean(_user_gold.word_scores(completions)))  # exactly
        assert "format_rate" not in m  # the synthetic grammar's format: only with the synthetic gold
        for j, entry in enumerate(ev["samples"]):  # the very samples the report shows
            assert entry["completions"][name][0]["text"] == completions[j]
            assert entry["completions"][name][0]["gold"] == pytest.approx(len(completions[j].split()) / 10)
    assert ev["policies"]["sft"]["win_rate"] == 0.5
    assert ev["policies"]["sft"]["win_counts"] == {"wins": 0, "ties": 8, "losses": 0}
    with pytest.raises(ConfigError, match="cannot import module 'no_such_module_xyz'"):  # before sampling
        evaluate_policies({"sft": sft_model}, prompts, reference="sft", gold="no_such_module_xyz:f")


def test_the_report_names_the_gold_and_drops_the_synthetic_format_column(tmp_path):
    from rlhfkit.evaluate.report import write_report

    pol = {"gold_mean": 0.4, "gold_std": 0.1, "win_rate": 0.5, "win_rate_se": 0.0, "kl": 0.0, "kl_se": 0.0,
           "length_tokens": 9.0, "length_words": 7.0, "distinct_1": 0.5, "distinct_2": 0.6, "eos_rate": 1.0,
           "top_completion": "x", "top_completion_share": 0.1}
    ev = {"reference": "sft", "gold": "_user_gold:words", "policies": {"sft": pol, "ppo": {**pol, "kl": 1.0}},
          "samples": []}
    text = write_report(tmp_path / "user", evaluation=ev).read_text()
    assert "Gold: _user_gold:words." in text
    header = next(ln for ln in text.splitlines() if ln.startswith("| policy | gold reward"))
    assert "format" not in header and "gold win-rate vs sft" in header
    synthetic = {**ev, "gold": "synthetic world gold",
                 "policies": {k: {**v, "format_rate": 1.0} for k, v in ev["policies"].items()}}
    text = write_report(tmp_path / "synthetic", evaluation=synthetic).read_text()
    assert "Gold: synthetic world gold." in text
    assert "| format |" in next(ln for ln in text.splitlines() if ln.startswith("| policy | gold reward"))


def test_ppo_monitors_a_user_gold_every_step(world, sft_model, tmp_path):
    from rlhfkit.train.ppo import train

    cfg = PPOConfig(model=str(sft_model), data=str(world / "prompts.jsonl"),
                    eval_data=str(world / "prompts_eval.jsonl"), output_dir=str(tmp_path),
                    reward_functions=["gold"], gold="_user_gold:words", estimator="rloo", num_samples=2,
                    prompts_per_device=8, mini_batch_size=16, ppo_epochs=1, max_new_tokens=16, max_length=80,
                    max_steps=2, log_every=1, eval_prompts=8, eval_every=0, learning_rate=5e-4, seed=0)
    train(cfg)
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["gold"] == "_user_gold:words" and s["best"]["metric"] == "gold_reward"
    rows = read_metrics(tmp_path)
    assert rows[0]["step"] == 0 and rows[0]["gold"] == "_user_gold:words"  # the first line names it
    # Calls: the step-0 evaluation, the rollouts of steps 1 and 2, the final evaluation.
    means = [float(np.mean(_user_gold.word_scores(c))) for _, c in _user_gold.CALLS]
    assert [len(c) for _, c in _user_gold.CALLS] == [8, 16, 16, 8]
    assert rows[0]["eval_gold"] == pytest.approx(means[0], abs=1e-6)
    steps = [r for r in rows if r["step"] > 0]
    assert [r["step"] for r in steps] == [1, 2]
    for r, mean in zip(steps, means[1:3]):
        assert r["gold_reward"] == pytest.approx(mean, abs=1e-6)
        assert r["proxy_gold_gap"] == pytest.approx(r["proxy_reward"] - r["gold_reward"], abs=2e-6)
    assert steps[-1]["eval_gold"] == pytest.approx(means[3], abs=1e-6)
    assert s["initial_eval_gold"] == pytest.approx(rows[0]["eval_gold"], abs=1e-6) and "initial_gold" not in s


def test_dpo_scores_its_sampled_evaluation_with_a_user_gold(world, sft_model, tmp_path):
    from rlhfkit.train.dpo import train

    def pairs(source: str, n: int) -> Path:
        prompts = [r["prompt"] for r in read_jsonl(world / source)][:n]
        path = tmp_path / source.replace("prompts", "pairs")
        rows = [{"prompt": p, "chosen": " the film was good .", "rejected": " the film was bad . bad ."}
                for p in prompts]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    cfg = DPOConfig(model=str(sft_model), data=str(pairs("prompts.jsonl", 16)),
                    eval_data=str(pairs("prompts_eval.jsonl", 4)), output_dir=str(tmp_path / "dpo"),
                    gold="_user_gold:words", per_device_batch_size=8, max_steps=2, max_length=96,
                    learning_rate=5e-4, log_every=1, eval_every=0, eval_sample_prompts=4,
                    eval_max_new_tokens=16, seed=3)
    train(cfg)
    s = json.loads((tmp_path / "dpo" / "summary.json").read_text())
    rows = read_metrics(tmp_path / "dpo")
    assert s["gold"] == "_user_gold:words" and rows[0]["gold"] == "_user_gold:words"
    assert [len(c) for _, c in _user_gold.CALLS] == [4, 4]  # the step-0 and the final evaluation
    means = [float(np.mean(_user_gold.word_scores(c))) for _, c in _user_gold.CALLS]
    assert rows[0]["eval_gold"] == pytest.approx(means[0], abs=1e-6)
    assert rows[-1]["step"] == 2 and rows[-1]["eval_gold"] == pytest.approx(means[1], abs=1e-6)
    assert s["initial_eval_gold"] == pytest.approx(rows[0]["eval_gold"], abs=1e-6)
    assert math.isfinite(s["final_eval_gold"])
