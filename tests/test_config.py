"""Config loading: strict keys and types, named errors, YAML + override precedence, --help text."""

import pytest
import yaml

from rlhfkit.config import SFTConfig, load_config, parse_overrides, save_config
from rlhfkit.errors import ConfigError


@pytest.fixture()
def model_dir(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    return str(d)


def write(tmp_path, data, name="cfg.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def test_yaml_then_overrides_win(tmp_path, model_dir):
    p = write(tmp_path, {"model": model_dir, "data": "d.jsonl", "learning_rate": 1e-4,
                         "per_device_batch_size": 4})
    cfg = load_config(SFTConfig, p, ["learning_rate=3e-4", "packing=true", "adam_betas=[0.8, 0.9]"])
    assert cfg.learning_rate == pytest.approx(3e-4)  # override beats file
    assert cfg.per_device_batch_size == 4  # file beats default
    assert cfg.packing is True and cfg.adam_betas == (0.8, 0.9)
    assert cfg.gradient_accumulation_steps == 1  # default


def test_no_file_all_from_overrides(model_dir):
    cfg = load_config(SFTConfig, None, [f"model={model_dir}", "data=x.jsonl", "max_steps=7"])
    assert cfg.max_steps == 7 and cfg.data == "x.jsonl"


def test_unknown_key_names_key_and_file(tmp_path, model_dir):
    p = write(tmp_path, {"model": model_dir, "data": "d.jsonl", "learning_rat": 1e-4})
    with pytest.raises(ConfigError) as e:
        load_config(SFTConfig, p)
    msg = str(e.value)
    assert "learning_rat" in msg and str(p) in msg and "unknown key" in msg


def test_wrong_type_from_command_line(tmp_path, model_dir):
    p = write(tmp_path, {"model": model_dir, "data": "d.jsonl"})
    with pytest.raises(ConfigError) as e:
        load_config(SFTConfig, p, ["per_device_batch_size=abc"])
    msg = str(e.value)
    assert "per_device_batch_size" in msg and "command line" in msg and "'abc'" in msg


@pytest.mark.parametrize("override,key", [
    ("learning_rate=-1e-3", "learning_rate"),
    ("per_device_batch_size=0", "per_device_batch_size"),
    ("gradient_accumulation_steps=0", "gradient_accumulation_steps"),
    ("warmup_ratio=1.5", "warmup_ratio"),
    ("max_length=0", "max_length"),
    ("adam_betas=[0.9, 1.5]", "adam_betas"),
    ("truncation_side=middle", "truncation_side"),
])
def test_impossible_values(model_dir, override, key):
    with pytest.raises(ConfigError) as e:
        load_config(SFTConfig, None, [f"model={model_dir}", "data=d.jsonl", override])
    assert key in str(e.value)


def test_missing_and_nonexistent_model_path(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(SFTConfig, None, ["data=d.jsonl"])
    assert "model" in str(e.value) and "required" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(SFTConfig, None, [f"model={tmp_path}/nope/model", "data=d.jsonl"])
    assert "does not exist" in str(e.value)
    # a hub id is accepted without touching the network (loading happens later)
    assert load_config(SFTConfig, None, ["model=org/some-model", "data=d.jsonl"]).model == "org/some-model"


def test_bad_yaml_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml.*invalid YAML"):
        load_config(SFTConfig, bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="list.yaml.*mapping"):
        load_config(SFTConfig, lst)
    with pytest.raises(ConfigError, match="not found"):
        load_config(SFTConfig, tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["novalue"])


def test_resolved_config_roundtrips(tmp_path, model_dir):
    cfg = load_config(SFTConfig, None, [f"model={model_dir}", "data=d.jsonl", "learning_rate=5e-4"])
    path = save_config(cfg, tmp_path / "run")
    again = load_config(SFTConfig, path)
    assert again == cfg


def test_every_field_is_documented():
    for name, field in SFTConfig.model_fields.items():
        assert field.description, f"SFTConfig.{name} has no docstring"


def test_settings_that_would_silently_break_rlhf_are_named_errors(tmp_path, model_dir):
    """Each of these used to be accepted and then ignored or quietly wrong."""
    from rlhfkit.config import PPOConfig, RewardConfig, config_from_dict

    base = {"model": model_dir, "data": "d.jsonl"}
    ppo = {**base, "reward_functions": ["gold"]}
    cases = [
        (RewardConfig, {**base, "use_margin": True, "ties": "davidson"}, "use_margin with ties 'davidson'"),
        (PPOConfig, {**ppo, "lora_r": 8, "lora_dropout": 0.05}, "lora_dropout must be 0 for RL"),
        (PPOConfig, {**ppo, "estimator": "rloo", "scale_rewards": "none"}, "scale_rewards is a GRPO setting"),
        (PPOConfig, {**ppo, "top_k": 50}, "top_k: RL rollouts sample from the full temperature softmax"),
    ]
    for cls, data, msg in cases:
        with pytest.raises(ConfigError, match=msg):
            config_from_dict(cls, data)
    assert config_from_dict(PPOConfig, {**ppo, "estimator": "grpo",
                                        "scale_rewards": "none"}).scale_rewards == "none"
    assert config_from_dict(RewardConfig, {**base, "use_margin": True}).use_margin


def test_a_key_a_stage_does_not_read_is_a_named_error(tmp_path, model_dir):
    """PPO counts prompts per step and never accumulates; keys that only fit other stages are named."""
    from rlhfkit.config import LabelExportConfig, PPOConfig, ScoreConfig, config_from_dict

    ppo = {"model": model_dir, "data": "d.jsonl", "reward_functions": ["gold"]}
    assert config_from_dict(PPOConfig, {**ppo, "prompts_per_device": 4}).prompts_per_device == 4
    with pytest.raises(ConfigError, match="per_device_batch_size: use prompts_per_device.*command line"):
        config_from_dict(PPOConfig, ppo, {"per_device_batch_size": 4})
    for key in ("gradient_accumulation_steps", "eval_batch_size"):
        with pytest.raises(ConfigError, match=f"{key}: PPO"):
            config_from_dict(PPOConfig, {**ppo, key: 4})
    with pytest.raises(ConfigError, match="output_dir.*unknown key"):
        config_from_dict(LabelExportConfig, {"store": "s.db", "project": "p", "output": "o.jsonl",
                                             "output_dir": "x"})
    with pytest.raises(ConfigError, match="seed.*unknown key"):
        config_from_dict(ScoreConfig, {"model": model_dir, "input": "i.jsonl", "output": "o.jsonl",
                                       "seed": 1})


def test_pipeline_sections_are_typed(model_dir):
    """A wrong key or type in a pipeline section fails on load, naming the section and the key."""
    from rlhfkit.config import PipelineConfig, config_from_dict

    base = {"policy": model_dir, "collect": {"prompts": "p.jsonl"},
            "rl": {"g": {"reward_functions": ["gold"]}}}
    cases = [
        ({"evaluate": {"num_prompt": 3}}, r"evaluate.num_prompt \[defaults\]: unknown key"),
        ({"reward": {"learning_rate": "fast"}}, "reward.learning_rate"),
        ({"rl": {"g": {"per_device_batch_size": 4}}}, "rl.g.per_device_batch_size: use prompts_per_device"),
        ({"dpo": {"d": {"data": "x.jsonl"}}}, "'dpo.d': `data` is set by the pipeline"),
        ({"label": {"mode": "people"}}, "needs `target`"),
        ({"label": {"target": 10}}, "target: not a key of label mode 'simulate'"),
    ]
    for extra, msg in cases:
        with pytest.raises(ConfigError, match=msg):
            config_from_dict(PipelineConfig, {**base, **extra})
    cfg = config_from_dict(PipelineConfig, {**base, "dpo": {"d": None},
                                            "label": {"mode": "people", "target": 5}})
    assert (cfg.label.target == 5 and cfg.dpo["d"].overrides() == {}
            and cfg.rl["g"]["reward_functions"] == ["gold"])
