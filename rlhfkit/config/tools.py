"""Configs of the synthetic world (`rlhf synth`, `rlhf gold-score`) and of `rlhf evaluate`."""

from __future__ import annotations

import os
from typing import Any

from pydantic import Field, field_validator, model_validator

from rlhfkit.config.base import BaseConfig, RunConfig, check_gold_spec, check_model_path


class SynthConfig(RunConfig):
    """Build the synthetic world (`rlhf synth`): corpus, tokenizer, tiny base LM, prompt and SFT sets."""

    output_dir: str = "runs/world"
    """Directory of the world's artefacts; reused when it already holds a world built with this config."""

    n_docs: int = Field(6000, gt=0)
    """Pre-training documents generated from the grammar."""

    vocab_size: int = Field(1024, ge=300)
    """Byte-level BPE vocabulary size of the trained tokenizer."""

    hidden_size: int = Field(192, gt=0)
    """Width of the tiny Llama-style base model."""

    num_layers: int = Field(4, gt=0)
    """Decoder layers of the base model."""

    num_heads: int = Field(4, gt=0)
    """Attention heads of the base model."""

    pretrain_steps: int = Field(300, gt=0)
    """Optimizer steps of base-model pre-training on the corpus."""

    pretrain_batch_size: int = Field(32, gt=0)
    """Sequences per pre-training step."""

    pretrain_seq_len: int = Field(128, gt=0)
    """Tokens per packed pre-training sequence."""

    pretrain_lr: float = Field(3e-3, gt=0.0)
    """Peak learning rate of pre-training."""

    n_sft: int = Field(4000, gt=0)
    """Prompt/completion demonstrations for SFT."""

    n_prompts: int = Field(1000, gt=0)
    """Prompts (review openings) for RL and evaluation; 10% go to the held-out set."""

    @model_validator(mode="after")
    def _heads_divide_width(self) -> SynthConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be divisible by num_heads")
        return self


class GoldScoreConfig(BaseConfig):
    """Score completions with the synthetic world's gold reward (`rlhf gold-score`). The scores go
    to `output` and are deterministic, so there is no `output_dir` or `seed`."""

    input: str
    """JSONL/JSON/CSV/Parquet with a `completion` column (and optionally `prompt`)."""

    output: str
    """JSONL file written with every input column plus the score column."""

    completion_field: str = "completion"
    """Column holding the text to score."""

    score_field: str = "gold_reward"
    """Name of the column written."""


class EvaluateConfig(RunConfig):
    """Evaluate policies on the same prompts and write evaluation.json + report.md (`rlhf evaluate`)."""

    output_dir: str = "runs/evaluate"
    """Directory of evaluation.json, report.md and its PNG plots."""

    policies: dict[str, str]
    """Policies to compare: display name -> Hugging Face model directory (base, SFT, RL/DPO checkpoints)."""

    reference: str = "sft"
    """Name (a key of `policies`) of the reference policy that win rates and KL are measured against."""

    prompts: str
    """Prompts file (JSONL/JSON/CSV/Parquet with a `prompt` column), e.g. the world's prompts_eval.jsonl."""

    max_prompts: int | None = Field(None, gt=0)
    """Use only the first N prompts (all when unset)."""

    reward_model: str | None = None
    """Reward model directory (from `rlhf reward`) giving the proxy score; none when unset."""

    gold: str | None = "synthetic"
    """Gold reward that scores every sample (gold mean, gold win rate vs the reference, the frontier;
    null for none): 'synthetic' (the synthetic world's gold; also the completion-format rate),
    'module:function' with signature (prompts, completions) -> list[float] (TRL's reward_funcs
    signature, with **kwargs, works too), or a reward-model directory from `rlhf reward` used as a
    held-out judge (its stored offset/scale applied)."""

    num_samples: int = Field(1, gt=0)
    """Completions sampled per prompt and policy."""

    max_new_tokens: int = Field(48, gt=0)
    """Maximum new tokens per completion."""

    temperature: float = Field(1.0, gt=0.0)
    """Sampling temperature; log-probs for the KL estimate use the same temperature."""

    max_length: int = Field(128, gt=0)
    """Maximum tokens of prompt + completion when the reward model scores them."""

    batch_size: int = Field(64, gt=0)
    """Sequences per generation / scoring batch."""

    runs: dict[str, str] | None = None
    """Training run directories (name -> dir with metrics.jsonl) whose curves go into the report."""

    reward_runs: dict[str, str] | None = None
    """Reward-model run directories (name -> dir with eval.json) for accuracy, calibration and length bias."""

    agreement: str | None = None
    """JSON file of labeler-agreement statistics to include in the report."""

    title: str = "rlhfkit report"
    """Title of report.md."""

    @field_validator("policies")
    @classmethod
    def _policies_exist(cls, v: dict[str, str]) -> dict[str, str]:
        if not v:
            raise ValueError("at least one policy is needed")
        return {name: check_model_path(path, f"policies.{name}") for name, path in v.items()}

    @field_validator("reward_model")
    @classmethod
    def _rm_exists(cls, v: str | None) -> str | None:
        return None if v is None else check_model_path(v, "reward_model")

    @field_validator("gold", mode="before")
    @classmethod
    def _gold_spec(cls, v: object) -> str | None:
        return check_gold_spec(v, "gold")

    @field_validator("prompts", "agreement")
    @classmethod
    def _file_exists(cls, v: str | None, info: Any) -> str | None:
        if v is not None and not os.path.exists(os.path.expanduser(v)):
            raise ValueError(f"'{v}' does not exist (for '{info.field_name}')")
        return None if v is None else os.path.expanduser(v)

    @field_validator("runs", "reward_runs")
    @classmethod
    def _runs_exist(cls, v: dict[str, str] | None, info: Any) -> dict[str, str] | None:
        if v is not None:
            for name, path in v.items():
                if not os.path.isdir(os.path.expanduser(path)):
                    raise ValueError(f"run directory '{path}' does not exist "
                                     f"(for '{info.field_name}.{name}')")
        return v

    @model_validator(mode="after")
    def _reference_is_a_policy(self) -> EvaluateConfig:
        if self.reference not in self.policies:
            raise ValueError(f"reference '{self.reference}' is not one of the policies "
                             f"({', '.join(self.policies)})")
        return self
