"""Typed, strict stage configs: YAML file + ``key=value`` overrides -> one validated object.

Every stage is invoked the same way, ``rlhf <stage> --config FILE.yaml [key=value ...]``.
Each config is a pydantic model with ``extra="forbid"``; a field's attribute docstring is its
only documentation and is what ``rlhf <stage> --help`` prints. A key a stage does not read is not
on it. All validation happens in :mod:`rlhfkit.config.loading`, before a stage loads anything.

- base.py: BaseConfig (strict settings, named errors for removed keys), RunConfig (output_dir,
  seed), check_model_path (and the paths a pipeline plans, planned_paths) and shared field types;
- train.py: TrainConfig, SFT / reward / DPO (with MicroBatchConfig), ScoreConfig; rl.py: PPOConfig;
- feedback.py: collect and label simulate / export / serve; judge.py: label judge (AI judges);
  tools.py: synth, gold-score, evaluate;
- pipeline.py: PipelineConfig and its typed sections; loading.py: YAML, overrides, errors, --help.

Importing this package does not import torch (the CLI builds its --help from it).
"""

from rlhfkit.config.base import (REWARD_FN, BaseConfig, RunConfig, check_gold_spec, check_model_path,
                                 check_reward_spec, planned_paths)
from rlhfkit.config.feedback import CollectConfig, LabelExportConfig, LabelServeConfig, LabelSimulateConfig
from rlhfkit.config.judge import LabelJudgeConfig
from rlhfkit.config.loading import (config_from_dict, describe_fields, load_config, parse_overrides,
                                    read_yaml, save_config)
from rlhfkit.config.pipeline import (SET_BY_PIPELINE, CollectSection, DPOSection, EvaluateSection,
                                     ExportSection, LabelSection, PipelineConfig, PPOSection, RewardSection,
                                     Section, SFTSection, SynthSection)
from rlhfkit.config.rl import PPOConfig
from rlhfkit.config.tools import EvaluateConfig, GoldScoreConfig, SynthConfig
from rlhfkit.config.train import (DPOConfig, MicroBatchConfig, PairTrainConfig, RewardConfig, ScoreConfig,
                                  SFTConfig, TrainConfig)

__all__ = [
    "REWARD_FN", "BaseConfig", "RunConfig", "check_gold_spec", "check_model_path", "check_reward_spec",
    "planned_paths",
    "TrainConfig", "MicroBatchConfig", "SFTConfig", "PairTrainConfig", "RewardConfig", "DPOConfig",
    "ScoreConfig", "PPOConfig",
    "CollectConfig", "LabelSimulateConfig", "LabelExportConfig", "LabelServeConfig", "LabelJudgeConfig",
    "SynthConfig", "GoldScoreConfig", "EvaluateConfig",
    "PipelineConfig", "Section", "SET_BY_PIPELINE", "SynthSection", "SFTSection", "CollectSection",
    "LabelSection", "ExportSection", "RewardSection", "PPOSection", "DPOSection", "EvaluateSection",
    "parse_overrides", "read_yaml", "load_config", "config_from_dict", "save_config", "describe_fields",
]
