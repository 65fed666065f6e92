"""Typed, strict stage configs: YAML file + ``key=value`` overrides -> one validated object.

Every stage is invoked the same way, ``rlhf <stage> --config FILE.yaml [key=value ...]``.
Each config is a pydantic model with ``extra="forbid"``; a field's attribute docstring is its
only documentation and is what ``rlhf <stage> --help`` prints. All validation (unknown key,
wrong type, impossible value, missing model path) happens here, before a stage loads anything,
and is reported as one :class:`~rlhfkit.errors.ConfigError` that names each key and where it
came from (the YAML file or the command line).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rlhfkit.errors import ConfigError

C = TypeVar("C", bound="BaseConfig")

# A hub id is "name" or "org/name" made of these characters; anything else must exist locally.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def check_model_path(value: str, key: str) -> str:
    """Accept an existing local directory or something shaped like a hub id; reject the rest.

    A path that looks local (absolute, ``./``, ``~``, or with more than one ``/``) but does not
    exist is the common typo; catching it here means no stage starts work on a missing model.
    """
    expanded = os.path.expanduser(value)
    if os.path.exists(expanded):
        return expanded
    looks_local = value.startswith(("/", ".", "~")) or value.count("/") > 1 or "\\" in value
    if looks_local or not _HUB_ID.match(value):
        raise ValueError(f"model path '{value}' does not exist (for '{key}')")
    return value


class BaseConfig(BaseModel):
    """Fields shared by every stage."""

    model_config = ConfigDict(
        extra="forbid",
        use_attribute_docstrings=True,
        validate_assignment=True,
        protected_namespaces=(),
    )

    output_dir: str = "runs/run"
    """Run directory: resolved config, metrics.jsonl, checkpoints, final model, summary.json."""

    seed: int = 0
    """Seed for python, numpy and torch RNGs, data order and initialisation."""


class TrainConfig(BaseConfig):
    """Optimisation, logging and checkpoint fields shared by the training stages."""

    model: str
    """Causal LM to start from: a local Hugging Face directory or a hub id."""

    tokenizer: str | None = None
    """Tokenizer directory or hub id; defaults to `model`."""

    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype of the trained weights. Keep float32 on CPU (bf16 makes log-prob ratios noisy)."""

    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    """Autocast mode passed to accelerate (GPU runs); 'no' for fp32 everywhere."""

    data: str
    """Training data: a JSONL/JSON/CSV/Parquet file, a `save_to_disk` directory or a hub dataset id."""

    data_split: str = "train"
    """Split to read when `data` is a DatasetDict directory or a hub dataset."""

    eval_data: str | None = None
    """Held-out data in the same formats; if unset, `eval_fraction` of `data` is held out."""

    eval_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    """Share of `data` held out for evaluation when `eval_data` is not given (0 disables eval)."""

    skip_invalid: bool = False
    """Drop malformed rows (and report how many and why) instead of stopping at the first one."""

    max_length: int = Field(512, gt=0)
    """Maximum tokens per sequence (prompt + response) after truncation."""

    learning_rate: float = Field(2e-5, gt=0.0)
    """Peak learning rate of AdamW."""

    weight_decay: float = Field(0.0, ge=0.0)
    """AdamW decoupled weight decay."""

    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW (beta1, beta2)."""

    adam_eps: float = Field(1e-8, gt=0.0)
    """AdamW epsilon."""

    lr_scheduler: Literal["linear", "cosine", "constant"] = "cosine"
    """Decay after warmup: linear or cosine to 0, or constant."""

    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    """Share of optimizer steps spent warming the learning rate up linearly from 0."""

    num_epochs: float = Field(1.0, gt=0.0)
    """Passes over the training data (fractions allowed); ignored when `max_steps` is set."""

    max_steps: int | None = Field(None, gt=0)
    """Total optimizer steps; overrides `num_epochs`."""

    per_device_batch_size: int = Field(8, gt=0)
    """Sequences per process per micro-batch."""

    gradient_accumulation_steps: int = Field(1, gt=0)
    """Micro-batches per optimizer step (the global batch is this x batch size x processes)."""

    max_grad_norm: float | None = Field(1.0, gt=0.0)
    """Clip the global gradient norm to this value; null disables clipping."""

    eval_every: int = Field(0, ge=0)
    """Evaluate every N optimizer steps (0: only at the end)."""

    eval_batch_size: int = Field(16, gt=0)
    """Sequences per process per evaluation batch."""

    log_every: int = Field(10, gt=0)
    """Write a metrics.jsonl line every N optimizer steps."""

    save_every: int = Field(0, ge=0)
    """Write a resumable checkpoint every N optimizer steps (0: none until the end)."""

    keep_checkpoints: int = Field(2, gt=0)
    """How many recent checkpoints to keep on disk (the best one, see `keep_best_metric`, is kept too)."""

    keep_best_metric: str | None = Field(None, min_length=1)
    """A metrics.jsonl key (e.g. eval_loss, eval_accuracy, eval_gold): the checkpoint of the step
    with its best value is never pruned (a step that sets a new best is checkpointed even between
    `save_every` saves); recorded in checkpoints/best.json."""

    keep_best_mode: Literal["max", "min"] = "max"
    """Whether a larger ('max') or smaller ('min', e.g. a loss) `keep_best_metric` is better."""

    resume: bool = False
    """Continue from the latest complete checkpoint in `output_dir` if there is one."""

    stop_after: int | None = Field(None, gt=0)
    """Stop after this many optimizer steps in this invocation, saving a checkpoint (for
    time-limited jobs); run again with `resume: true` to continue the same schedule."""

    on_nonfinite: Literal["stop", "skip"] = "stop"
    """A non-finite loss or gradient norm skips that update; then 'stop' ends the run with a clear
    message (the last good checkpoint intact) or 'skip' goes on, at most `max_nonfinite_skips` times."""

    max_nonfinite_skips: int = Field(10, ge=0)
    """With on_nonfinite=skip, stop after this many skipped updates."""

    trackers: list[Literal["tensorboard", "wandb"]] = []
    """Extra experiment trackers via accelerate (metrics.jsonl is always written)."""

    disable_dropout: bool = True
    """Set every dropout probability to 0 (RLHF-DETAILS item 7)."""

    lora_r: int = Field(0, ge=0)
    """LoRA rank; 0 trains all weights. Needs the `peft` package."""

    lora_alpha: float = Field(16.0, gt=0.0)
    """LoRA scaling numerator (scale = alpha / r)."""

    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the LoRA branch."""

    lora_target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Module names that get LoRA adapters, or 'all-linear'."""

    @field_validator("model", "tokenizer")
    @classmethod
    def _model_exists(cls, v: str | None, info: Any) -> str | None:
        return None if v is None else check_model_path(v, info.field_name)

    @field_validator("adam_betas")
    @classmethod
    def _betas_in_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError("both betas must be in [0, 1)")
        return v


class SFTConfig(TrainConfig):
    """Supervised fine-tuning on demonstrations (`rlhf sft`)."""

    output_dir: str = "runs/sft"
    """Run directory: resolved config, metrics.jsonl, checkpoints, final model, summary.json."""

    completion_only_loss: bool = True
    """Train on completion tokens only (prompt tokens masked); false trains on the whole sequence."""

    packing: bool = False
    """Concatenate examples into full `max_length` blocks (no padding waste). Attention is
    restricted to each example by resetting position ids and a block-diagonal mask."""

    truncation_side: Literal["left", "right"] = "right"
    """Which end of an over-long sequence is cut: 'right' drops the completion's tail, 'left'
    drops the prompt's beginning (keeping the completion)."""

    sample_prompts: int = Field(0, ge=0)
    """After training, sample completions for this many held-out prompts into samples.jsonl."""

    sample_max_new_tokens: int = Field(48, gt=0)
    """Maximum new tokens per sample."""


class PairTrainConfig(TrainConfig):
    """Fields shared by the stages that train on preference pairs (reward model, DPO family)."""

    max_prompt_length: int | None = Field(None, gt=0)
    """Prompt tokens kept when a pair is too long (the prompt's end is kept); default max_length/2."""


class RewardConfig(PairTrainConfig):
    """Reward-model training on preference pairs or rankings (`rlhf reward`)."""

    output_dir: str = "runs/reward"
    """Run directory: resolved config, metrics.jsonl, checkpoints, final model, summary.json."""

    learning_rate: float = Field(1e-5, gt=0.0)
    """Peak learning rate of AdamW."""

    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"
    """Decay after warmup; the usual recipe is one epoch annealed linearly to 0 (RLHF-DETAILS item 4)."""

    data_format: Literal["auto", "pairs", "ranking"] = "auto"
    """'pairs' (prompt/chosen/rejected, optional margin and tie columns), 'ranking' (K ranked
    responses per prompt, all C(K,2) pairs in one batch element weighted 1/C(K,2)), or 'auto'
    (ranking when the rows are rankings, else pairs)."""

    use_margin: bool = False
    """Subtract the row's `margin` (preference strength) inside the Bradley-Terry loss (Llama 2)."""

    ties: Literal["drop", "rao_kupper", "davidson"] = "drop"
    """Rows with `tie: true`: drop them, or fit them with a Bradley-Terry-with-ties likelihood.
    A tie is never read as a win for 'chosen'."""

    tie_param: float = Field(1.5, gt=0.0)
    """Tie parameter: theta > 1 for Rao-Kupper, nu >= 0 for Davidson."""

    center_coef: float = Field(0.0, ge=0.0)
    """Weight of the reward-centering regulariser coef * mean((r_c + r_r)^2); 0 disables it."""

    normalize: Literal["none", "mean", "mean_std"] = "mean"
    """After training, shift (and optionally scale) rewards to mean 0 (std 1) on `normalize_data`;
    stored in the model's config and applied by every later stage (RLHF-DETAILS item 5)."""

    normalize_data: str | None = None
    """Prompt/completion rows from the policy RL starts from (e.g. SFT data or SFT samples);
    default: the chosen and rejected responses of the training data."""

    normalize_samples: int = Field(2000, gt=0)
    """At most this many responses are scored to compute the normalisation."""

    ensemble: int = Field(1, gt=0)
    """Train this many reward models with different seeds; scores then report mean and std."""

    @model_validator(mode="after")
    def _tie_param_valid(self) -> "RewardConfig":
        if self.ties == "rao_kupper" and self.tie_param <= 1.0:
            raise ValueError("tie_param must be > 1 for Rao-Kupper ties")
        if self.use_margin and self.ties != "drop":
            raise ValueError(f"use_margin with ties '{self.ties}': the tie likelihoods have no margin term, "
                             "so the margins would be silently ignored; set ties=drop or use_margin=false")
        return self


class ScoreConfig(BaseConfig):
    """Score prompt/response rows with a reward model (`rlhf score`)."""

    model: str
    """Reward model directory written by `rlhf reward` (or any sequence-classification model)."""

    input: str
    """Rows with `prompt` and a response column (JSONL/JSON/CSV/Parquet)."""

    output: str
    """JSONL written with every input column plus the score column(s)."""

    response_field: str = "completion"
    """Column holding the response to score."""

    score_field: str = "reward"
    """Name of the score column; an ensemble adds `<score_field>_std`."""

    batch_size: int = Field(32, gt=0)
    """Sequences per forward pass."""

    max_length: int = Field(512, gt=0)
    """Maximum tokens per prompt + response."""

    @field_validator("model")
    @classmethod
    def _model_exists(cls, v: str) -> str:
        return check_model_path(v, "model")


# DPOConfig goes here (rlhf dpo).
class DPOConfig(PairTrainConfig):
    """Direct preference optimisation and its variants (`rlhf dpo`)."""

    output_dir: str = "runs/dpo"
    """Run directory: resolved config, metrics.jsonl, checkpoints, reference log-prob cache, final
    model, summary.json."""

    learning_rate: float = Field(5e-7, gt=0.0)
    """Peak learning rate of AdamW (DPO papers use about 5e-7 for 7B models; tiny models and LoRA
    need far more)."""

    loss_type: Literal["sigmoid", "ipo", "cdpo", "hinge", "simpo"] = "sigmoid"
    """'sigmoid': DPO on summed response log-probs; 'cdpo': DPO with label smoothing; 'hinge':
    SLiC-style relu(1 - beta h); 'ipo': IPO on length-normalised log-ratios; 'simpo': SimPO,
    reference-free and length-normalised (see rlhfkit/losses.py)."""

    beta: float = Field(0.1, gt=0.0)
    """Strength of the KL anchor to the reference: larger keeps the policy closer to it (DPO's
    beta, IPO's tau). For SimPO it scales the reward instead, and is much larger (about 2)."""

    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5)
    """cDPO: assumed probability that a preference label is flipped (loss_type 'cdpo' only)."""

    simpo_gamma: float = Field(0.5, ge=0.0)
    """SimPO's target reward margin gamma (loss_type 'simpo' only; ignored otherwise)."""

    rpo_alpha: float = Field(0.0, ge=0.0)
    """Weight of an NLL (SFT) term on the chosen response, normalised per token (RPO); 0 disables."""

    precompute_ref_logprobs: bool = False
    """Compute the reference log-probs of every train/eval pair once before training and cache
    them in the run directory (keyed by data, tokenizer, reference weights and max lengths), so
    training skips the reference forward and a resumed or repeated run does not recompute."""

    eval_sample_prompts: int = Field(32, ge=0)
    """Held-out prompts sampled at each evaluation to estimate the sequence-level KL to the
    reference (and the gold reward); 0 disables sampling."""

    eval_max_new_tokens: int = Field(48, gt=0)
    """Maximum new tokens per evaluation sample."""

    eval_temperature: float = Field(1.0, gt=0.0)
    """Sampling temperature of evaluation samples; the KL is between the policy and reference
    distributions at this temperature (logits divided by it in both)."""

    gold_reward: bool = False
    """Score evaluation samples with the synthetic world's gold reward (synthetic data only)."""

    @model_validator(mode="after")
    def _variant_keys_fit_loss_type(self) -> "DPOConfig":
        if self.label_smoothing > 0 and self.loss_type != "cdpo":
            raise ValueError(f"label_smoothing is used by loss_type 'cdpo' only "
                             f"(loss_type is '{self.loss_type}')")
        if self.loss_type == "cdpo" and self.label_smoothing == 0:
            raise ValueError("loss_type 'cdpo' needs label_smoothing > 0 (with 0 it is plain 'sigmoid')")
        return self



# PPOConfig (rlhf ppo: PPO, RLOO, GRPO).
_REWARD_FN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class PPOConfig(TrainConfig):
    """Online RL from a reward (`rlhf ppo`): PPO with a critic, or critic-free RLOO / GRPO.

    `data` is a prompt file (any format with a prompt column). `per_device_batch_size` is the
    number of prompts each process rolls out per step; `gradient_accumulation_steps` is unused."""

    output_dir: str = "runs/ppo"
    """Run directory: resolved config, metrics.jsonl, checkpoints, best/, final model, summary.json."""

    learning_rate: float = Field(1e-5, gt=0.0)
    """Peak learning rate of the policy's AdamW."""

    adam_eps: float = Field(1e-5, gt=0.0)
    """AdamW epsilon (1e-5 as in the PPO-RLHF reference code, RLHF-DETAILS item 18)."""

    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"
    """Decay after warmup over all PPO optimizer steps (linear to 0, item 18)."""

    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of optimizer steps spent warming the learning rate up linearly from 0."""

    per_device_batch_size: int = Field(16, gt=0)
    """Prompts each process samples per RL step (each gives `num_samples` episodes)."""

    estimator: Literal["ppo", "rloo", "grpo"] = "ppo"
    """'ppo': critic + GAE + clipped surrogate; 'rloo': leave-one-out baseline over `num_samples`
    samples per prompt; 'grpo': group-normalised advantages. All share the rollout and PPO epochs."""

    num_samples: int | None = Field(None, gt=0)
    """Samples per prompt per step; default 1 for ppo, 4 for rloo / grpo (which need >= 2)."""

    mini_batch_size: int = Field(8, gt=0)
    """Episodes per PPO minibatch (per process); one optimizer step each."""

    ppo_epochs: int = Field(4, gt=0)
    """Passes over each rollout batch, each with a fresh shuffled order of minibatches."""

    max_new_tokens: int = Field(48, gt=0)
    """Maximum sampled tokens per response; responses without EOS get `no_eos_penalty`."""

    temperature: float = Field(0.7, gt=0.0)
    """Sampling temperature of rollouts; every log-prob (rollout, reference, training) divides
    the logits by it (item 12)."""

    max_prompt_length: int | None = Field(None, gt=0)
    """Prompt tokens kept (from the end: that is what a response answers; a leading BOS stays);
    longer prompts are cut from the left with a counted warning. Default and upper bound: the
    model's context (`max_position_embeddings`) minus `max_new_tokens`."""

    reward_model: str | None = None
    """Reward model directory (`rlhf reward` output; its stored offset/scale are applied)."""

    reward_functions: list[str] = []
    """Python reward functions `module:function` with signature (prompts, completions) -> list of
    floats; `gold` is shorthand for the synthetic world's gold reward."""

    reward_weights: list[float] | None = None
    """Weights of the reward sources (reward_model first, then reward_functions in order); default 1 each."""

    no_eos_penalty: float | None = -1.0
    """Score given to (or subtracted from, see `no_eos_penalty_mode`) responses that never emit EOS;
    null disables (item 11)."""

    no_eos_penalty_mode: Literal["replace", "subtract"] = "replace"
    """'replace' the score of a response without EOS by `no_eos_penalty`, or 'subtract' it."""

    kl_coef: float = Field(0.05, ge=0.0)
    """KL coefficient beta (initial value when `kl_target` is set)."""

    kl_target: float | None = Field(None, gt=0.0)
    """Target sequence KL of the adaptive controller (Ziegler et al.); null keeps beta fixed."""

    kl_horizon: float = Field(10000.0, gt=0.0)
    """Horizon (in episodes) of the adaptive KL controller."""

    scale_rewards: Literal["group", "none"] = "group"
    """GRPO only: divide each group's centred scores by the group's std ('group', Shao et al. 2024)
    or not ('none': Dr. GRPO, Liu et al. 2025, which finds the division favours prompts whose
    samples barely differ)."""

    kl_in: Literal["reward", "loss"] = "reward"
    """Where the KL penalty goes: 'reward' (k1 per token in the reward, the PPO-RLHF classic) or
    'loss' (k3 added to the policy loss, as GRPO; rloo / grpo only)."""

    gamma: float = Field(1.0, ge=0.0, le=1.0)
    """GAE discount (item 14)."""

    lam: float = Field(0.95, ge=0.0, le=1.0)
    """GAE lambda (item 14)."""

    cliprange: float = Field(0.2, gt=0.0)
    """Policy ratio clip (item 15)."""

    cliprange_value: float = Field(0.2, gt=0.0)
    """Value clip around the rollout's values (item 15)."""

    whiten_advantages: bool = True
    """Whiten PPO advantages over valid tokens (item 14)."""

    value_model: str | None = None
    """Initialisation of the separate value network; default the reward model, else the policy
    (`model`) with a fresh small head (item 17)."""

    value_learning_rate: float | None = Field(None, gt=0.0)
    """Learning rate of the value model; default `learning_rate`."""

    critic: Literal["separate", "policy_head"] = "separate"
    """PPO critic: 'separate' (its own network, see `value_model`) or 'policy_head' (a linear
    d_model -> 1 head on the policy's last hidden states, trained with the policy loss plus
    `vf_coef` * value loss by the policy's optimizer; not saved in the final policy directory)."""

    vf_coef: float = Field(0.1, ge=0.0)
    """Weight of the value loss in the policy loss with `critic: policy_head`."""

    gold_reward: bool = False
    """Also score every rollout with the synthetic gold reward and log gold and proxy - gold gap."""

    max_kl: float | None = Field(None, gt=0.0)
    """Alarm when the mean sequence KL to the reference exceeds this; null disables."""

    kl_alarm: Literal["warn", "stop"] = "stop"
    """What the `max_kl` alarm does: log a warning, or stop the run (checkpoint and best/ kept)."""

    gap_alarm_steps: int = Field(0, ge=0)
    """Alarm when the proxy - gold reward gap widens this many steps in a row (reward hacking;
    needs `gold_reward`); 0 disables."""

    gap_alarm: Literal["warn", "stop"] = "warn"
    """What the gap alarm does: log a warning, or stop the run (checkpoint and best/ kept)."""

    collapse_alarm: Literal["off", "warn", "stop"] = "warn"
    """Mode-collapse alarm: log a warning, stop the run (checkpoint and best/ kept), or off. It fires
    when batch distinct-2 or token entropy falls below `collapse_threshold` of its value at the
    first step, or one completion takes more than 1 - `collapse_threshold` of the batch."""

    collapse_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    """Fraction of the starting diversity below which the collapse alarm fires (see `collapse_alarm`)."""

    keep_best: bool = True
    """Save the policy of the best rollout (gold reward if `gold_reward`, else proxy) to best/."""

    eval_prompts: int = Field(32, ge=0)
    """Held-out prompts sampled at each evaluation (proxy, and gold with `gold_reward`); 0 disables."""

    eval_num_samples: int = Field(1, gt=0)
    """Samples per held-out prompt at each evaluation (more samples, less noisy eval means)."""

    ref_model: str | None = None
    """Reference policy of the KL penalty (default: `model`). Iterated RLHF starts a round from the
    previous round's policy while the KL keeps anchoring to the SFT model."""

    @field_validator("reward_model", "value_model", "ref_model")
    @classmethod
    def _rm_exists(cls, v: str | None, info: Any) -> str | None:
        return None if v is None else check_model_path(v, info.field_name)

    @field_validator("reward_functions")
    @classmethod
    def _fn_spec(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if s != "gold" and not _REWARD_FN.match(s)]
        if bad:
            raise ValueError(f"reward functions must be 'module:function' or 'gold', got {bad}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _no_truncated_sampling(cls, data: Any) -> Any:
        if isinstance(data, dict):
            bad = [k for k in ("top_k", "top_p") if k in data]
            if bad:
                raise ValueError(f"{'/'.join(bad)}: RL rollouts sample from the full temperature softmax, whose "
                                 "log-probs are the ones trained on; top-k / top-p sampling would make PPO, RLOO "
                                 "and GRPO off-policy, so these keys do not exist for this stage (use temperature)")
        return data

    @model_validator(mode="after")
    def _ppo_consistent(self) -> PPOConfig:
        n_sources = int(self.reward_model is not None) + len(self.reward_functions)
        if n_sources == 0:
            raise ValueError("give a reward: reward_model and/or reward_functions")
        if self.reward_weights is not None and len(self.reward_weights) != n_sources:
            raise ValueError(f"reward_weights has {len(self.reward_weights)} entries for {n_sources} reward sources")
        if self.estimator != "ppo" and self.num_samples is not None and self.num_samples < 2:
            raise ValueError(f"estimator '{self.estimator}' needs num_samples >= 2")
        if self.kl_in == "loss" and self.estimator == "ppo":
            raise ValueError("kl_in 'loss' is for rloo / grpo; PPO puts the KL in the reward")
        if self.scale_rewards != "group" and self.estimator != "grpo":
            raise ValueError(f"scale_rewards is a GRPO setting; estimator is '{self.estimator}'")
        if self.lora_r and self.lora_dropout > 0:
            # A LoRA branch with dropout makes two forwards of the same weights differ: the first
            # PPO ratio is then not 1 and the KL to the adapter-off reference is noise.
            raise ValueError("lora_dropout must be 0 for RL (item 7: with dropout the policy ratio of "
                             "the first minibatch is not 1)")
        if self.ref_model and self.lora_r:
            raise ValueError("ref_model with LoRA: the reference is the adapter-off policy; drop one of them")
        return self

    @property
    def samples_per_prompt(self) -> int:
        return self.num_samples or (1 if self.estimator == "ppo" else 4)


class SynthConfig(BaseConfig):
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
    def _heads_divide_width(self) -> "SynthConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be divisible by num_heads")
        return self


class GoldScoreConfig(BaseConfig):
    """Score completions with the synthetic world's gold reward (`rlhf gold-score`)."""

    input: str
    """JSONL/JSON/CSV/Parquet with a `completion` column (and optionally `prompt`)."""

    output: str
    """JSONL file written with every input column plus the score column."""

    completion_field: str = "completion"
    """Column holding the text to score."""

    score_field: str = "gold_reward"
    """Name of the column written."""


class CollectConfig(BaseConfig):
    """Sample (or import) responses and create comparison tasks in a feedback project (`rlhf collect`)."""

    output_dir: str = "runs/collect"
    """Directory for the resolved config and summary.json of this collection run."""

    store: str
    """Feedback store: a SQLAlchemy URL or a file path (SQLite); created if missing."""

    project: str
    """Project to add the tasks to; created if missing."""

    guidelines: str | None = None
    """Markdown file with the labelling guidelines of a new project (or a new version for an existing one)."""

    annotators_per_task: int = Field(1, gt=0)
    """How many distinct annotators judge each (non-calibration) task; for a new project."""

    prompts: str | None = None
    """Prompts to sample responses for (any format rlhfkit.data reads, with a `prompt` column)."""

    prompts_split: str = "train"
    """Split of `prompts` when it is a hub or saved dataset with several."""

    max_prompts: int | None = Field(None, gt=0)
    """Use only the first N prompts."""

    responses: str | None = None
    """JSONL/JSON/CSV/Parquet of responses to import instead of sampling: `prompt`, `response` (or
    `completion`), optional `model_id` (or `model`) and `sampling` (object)."""

    models: list[str] = []
    """Hugging Face model directories to sample from (with `prompts`)."""

    model_names: list[str] | None = None
    """Model ids recorded in the store, one per entry of `models` (default: the paths)."""

    num_samples: int = Field(2, gt=0)
    """Responses sampled per prompt per model."""

    temperature: float = Field(1.0, ge=0.0)
    """Sampling temperature (0 = greedy)."""

    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling threshold."""

    top_k: int = Field(0, ge=0)
    """Top-k sampling (0 = off)."""

    max_new_tokens: int = Field(48, gt=0)
    """Longest response sampled, in tokens."""

    batch_size: int = Field(32, gt=0)
    """Prompts per generation batch."""

    task_size: int = Field(2, ge=2)
    """Responses compared per task: 2 = pairs, K > 2 = rankings of K."""

    pairs_per_prompt: int = Field(1, gt=0)
    """Tasks per prompt (distinct response sets; cross-model sets first when there are several models)."""

    calibration: int = Field(0, ge=0)
    """How many of the tasks are calibration tasks, shown to every annotator first."""

    select: Literal["random", "uncertain"] = "random"
    """How pairs are chosen per prompt: 'random' (cross-model first), or 'uncertain' (active
    selection: the pairs whose preference `selection_model` is least sure of, i.e. the highest
    binary entropy of the ensemble-mean P(A > B); pairs only, task_size 2)."""

    selection_model: str | None = None
    """Reward-model directory (an ensemble directory too) that scores the candidates for
    select=uncertain; required then, unused otherwise."""

    @model_validator(mode="after")
    def _one_source(self) -> "CollectConfig":
        if self.select == "uncertain":
            if self.task_size != 2:
                raise ValueError(f"select=uncertain ranks pairs: it needs task_size=2, got {self.task_size}")
            if self.selection_model is None:
                raise ValueError("select=uncertain needs `selection_model` (a reward-model directory)")
        if (self.prompts is None) == (self.responses is None):
            raise ValueError("give exactly one of `prompts` (with `models`) or `responses`")
        if self.prompts is not None and not self.models:
            raise ValueError("`prompts` needs `models` to sample from")
        if self.responses is not None and self.models:
            raise ValueError("`models` are for sampling from `prompts`; imported `responses` need none")
        if self.model_names is not None and len(self.model_names) != len(self.models):
            raise ValueError(f"model_names has {len(self.model_names)} entries for {len(self.models)} models")
        if self.guidelines is not None and not os.path.isfile(os.path.expanduser(self.guidelines)):
            raise ValueError(f"guidelines file '{self.guidelines}' does not exist")
        return self

    @field_validator("models")
    @classmethod
    def _models_exist(cls, v: list[str]) -> list[str]:
        return [check_model_path(m, "models") for m in v]

    @field_validator("selection_model")
    @classmethod
    def _selection_model_exists(cls, v: str | None) -> str | None:
        if v is not None and not os.path.isdir(os.path.expanduser(v)):
            raise ValueError(f"selection_model '{v}' is not an existing directory")
        return None if v is None else os.path.expanduser(v)


class LabelSimulateConfig(BaseConfig):
    """Simulated annotators answer a project's queue through the store (`rlhf label simulate`)."""

    output_dir: str = "runs/label-simulate"
    """Directory for the resolved config and summary.json."""

    store: str
    """Feedback store: a SQLAlchemy URL or a file path (SQLite)."""

    project: str
    """Project whose queue the simulated annotators answer."""

    num_annotators: int = Field(3, gt=0)
    """Simulated annotators (created as `<name_prefix>-1` ... if missing, reused otherwise)."""

    name_prefix: str = "sim"
    """Name prefix of the simulated annotators."""

    reward: str = "gold"
    """The reward they judge by: "gold" (the synthetic world's) or "module:function" taking
    (prompts, completions) -> scores."""

    temperature: float = Field(0.3, ge=0.0)
    """Bradley-Terry temperature on reward differences (0 = always the higher reward)."""

    position_bias: float = 0.0
    """Logit added in favour of the response shown first (left); > 0 = prefers the left one."""

    length_bias: float = 0.0
    """Logit added per word that the first response is longer than the second."""

    tie_threshold: float = Field(0.0, ge=0.0)
    """|reward difference| below this is a tie: both good if both rewards exceed the project median, else both bad."""

    strength_bins: list[float] = [0.1, 0.3, 0.6]
    """Increasing |reward difference| edges between strengths 1|2|3|4."""

    max_rounds: int = Field(100000, gt=0)
    """Upper bound on queue passes (a guard: the queue normally empties much sooner)."""

    @field_validator("reward")
    @classmethod
    def _reward_spec(cls, v: str) -> str:
        if v != "gold" and not _REWARD_FN.match(v):
            raise ValueError(f"reward must be 'gold' or 'module:function', got {v!r}")
        return v

    @field_validator("strength_bins")
    @classmethod
    def _bins(cls, v: list[float]) -> list[float]:
        if len(v) != 3 or any(b <= a for a, b in zip(v, v[1:])) or v[0] < 0:
            raise ValueError(f"strength_bins must be 3 increasing non-negative edges, got {v}")
        return v


class LabelExportConfig(BaseConfig):
    """Export a project's judgements as a preference dataset (`rlhf label export`)."""

    output_dir: str = "runs/label-export"
    """Unused by export (the data go to `output`); kept for the common config shape."""

    store: str
    """Feedback store: a SQLAlchemy URL or a file path (SQLite)."""

    project: str
    """Project to export."""

    output: str
    """A `.jsonl` file, or a directory written with `datasets.Dataset.save_to_disk`."""

    aggregate: Literal["judgement", "majority"] = "judgement"
    """One row per judgement, or one row per task with the majority label and its `agreement`."""

    ties: Literal["drop", "keep"] = "drop"
    """Drop tied judgements, or keep them as rows with `tie: true` (for tie-aware reward losses)."""

    min_agreement: float = Field(0.0, ge=0.0, le=1.0)
    """Keep only tasks whose share of annotators agreeing with the majority is at least this."""

    rankings: Literal["pairs", "ranking"] = "pairs"
    """`pairs`: every row prompt/chosen/rejected (K-way judgements expanded to their pairs);
    `ranking`: every row prompt/responses/ranks (pairs become rankings of 2)."""

    margins: list[float] = [0.0, 0.3333, 0.6667, 1.0]
    """`margin` written for strength 1, 2, 3, 4 (Llama 2's small-margin scale); no strength, no margin."""

    include_calibration: bool = True
    """Export calibration tasks too."""

    @field_validator("margins")
    @classmethod
    def _four(cls, v: list[float]) -> list[float]:
        if len(v) != 4:
            raise ValueError(f"margins needs one value per strength 1-4, got {len(v)}")
        return v


class LabelServeConfig(BaseConfig):
    """Serve the annotator web UI, its JSON API and the admin pages (`rlhf label serve`)."""

    output_dir: str = "runs/label-serve"
    """Unused by serve (everything lives in the store); kept for the common config shape."""

    store: str = "feedback.db"
    """Feedback store: a SQLAlchemy URL or a file path (SQLite); created (or upgraded) if needed."""

    host: str = "127.0.0.1"
    """Interface to listen on; the default serves this machine only (put a TLS proxy in front to expose it)."""

    port: int = Field(8000, ge=0, le=65535)
    """TCP port to listen on."""

    create_admin: str | None = None
    """Create an admin account with this name before serving (skipped with a message if it exists)."""

    create_admin_password: str | None = None
    """Password of `create_admin`; if not given, one is generated and printed once."""


class EvaluateConfig(BaseConfig):
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

    gold: bool = True
    """Add the synthetic world's gold reward, gold win rate and completion-format rate."""

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
                    raise ValueError(f"run directory '{path}' does not exist (for '{info.field_name}.{name}')")
        return v

    @model_validator(mode="after")
    def _reference_is_a_policy(self) -> "EvaluateConfig":
        if self.reference not in self.policies:
            raise ValueError(f"reference '{self.reference}' is not one of the policies ({', '.join(self.policies)})")
        return self


# ----------------------------------------------------------------------------- loading


class PipelineConfig(BaseConfig):
    """`rlhf run PIPELINE.yaml`: the whole loop from one file (rlhfkit/pipeline.py).

    Each stage section holds that stage's keys (`rlhf <stage> --help`); the pipeline fills in the
    paths that connect stages (models, data, store, output directories). `${world}` in any string
    is the synthetic world's directory when there is a `world` section."""

    output_dir: str = "runs/pipeline"
    """Directory of every stage's run directory, the feedback store, report.md and its plots."""

    project: str = "pipeline"
    """Feedback-store project that holds the comparisons of every round."""

    rounds: int = Field(1, ge=1)
    """Iterated RLHF: rounds of collect -> label -> reward -> RL (each round samples the last policy)."""

    world: dict[str, Any] | None = None
    """Build the synthetic world first (`rlhf synth` keys; {} for the defaults)."""

    sft: dict[str, Any] | None = None
    """Supervised fine-tuning (`rlhf sft` keys: model, data, ...); its output is the SFT policy."""

    policy: str | None = None
    """Starting (SFT) policy when there is no `sft` section."""

    collect: dict[str, Any] = Field(default_factory=dict)
    """`rlhf collect` keys (prompts, num_samples, pairs_per_prompt, select, ...)."""

    label: dict[str, Any] = Field(default_factory=lambda: {"mode": "simulate"})
    """mode 'simulate' (`rlhf label simulate` keys) or 'people' (target: judgements to wait for;
    poll_seconds; timeout_seconds) while annotators label in `rlhf label serve`."""

    export: dict[str, Any] = Field(default_factory=dict)
    """`rlhf label export` keys (aggregate, ties, min_agreement)."""

    reward: dict[str, Any] | None = None
    """Reward-model training (`rlhf reward` keys); retrained each round on all comparisons so far."""

    rl: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Online RL runs by name, each `rlhf ppo` keys (estimator: ppo | rloo | grpo, kl_coef, ...)."""

    dpo: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """DPO-family runs by name, each `rlhf dpo` keys (loss_type, beta, ...)."""

    evaluate: dict[str, Any] | None = None
    """Final evaluation + report: prompts (file), num_prompts, num_samples, max_new_tokens, gold."""

    @model_validator(mode="after")
    def _pipeline_consistent(self) -> "PipelineConfig":
        if (self.sft is None) == (self.policy is None):
            raise ValueError("give exactly one of `sft` (train the SFT policy) and `policy` (start from one)")
        if not self.collect.get("prompts") and not self.collect.get("responses"):
            raise ValueError("collect needs `prompts` (a prompt file) or `responses` (a JSONL to import)")
        if self.label.get("mode", "simulate") not in ("simulate", "people"):
            raise ValueError(f"label.mode must be 'simulate' or 'people', got {self.label.get('mode')!r}")
        if not self.rl and not self.dpo:
            raise ValueError("nothing to train: add `rl` and/or `dpo` runs")
        bad = [n for n in (*self.rl, *self.dpo) if not n.replace("-", "").replace("_", "").isalnum()]
        if bad:
            raise ValueError(f"run names must be letters, digits, '-' or '_': {bad}")
        return self


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a=1", "b.c=x"]`` -> ``{"a": 1, "b": {"c": "x"}}``; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"command line: override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"command line: override '{item}' has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except (yaml.YAMLError, ValueError, TypeError, AttributeError):
            # PyYAML's constructors raise plain ValueError etc. for e.g. '2020-13-45' or
            # '!!int abc'. Leave it a string; the field's type decides whether that is valid.
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"command line: key '{key}' conflicts with another override")
        node[parts[-1]] = value
    return out


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = _deep_merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def _flat_keys(d: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for k, v in d.items():
        keys.add(prefix + k)
        if isinstance(v, dict):
            keys |= _flat_keys(v, prefix + k + ".")
    return keys


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping, turning every failure into a ConfigError that names the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML: {e}") from None
    except (ValueError, TypeError, AttributeError) as e:  # PyYAML constructors: '2020-13-45', '!!int abc'
        raise ConfigError(f"{p}: invalid YAML value: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of key: value, got {type(data).__name__}")
    return data


def load_config(cls: type[C], path: str | os.PathLike | None = None,
                overrides: list[str] | None = None) -> C:
    """Build ``cls`` from an optional YAML file and ``key=value`` overrides (overrides win)."""
    file_values = read_yaml(path) if path is not None else {}
    cli_values = parse_overrides(overrides or [])
    return config_from_dict(cls, file_values, cli_values, source=str(path) if path else None)


def config_from_dict(cls: type[C], file_values: dict[str, Any], cli_values: dict[str, Any] | None = None,
                     *, source: str | None = None) -> C:
    """Validate merged values; errors name each key and whether it came from ``source`` or the CLI."""
    cli_values = cli_values or {}
    cli_keys = _flat_keys(cli_values)
    merged = _deep_merge(file_values, cli_values)
    try:
        return cls.model_validate(merged)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(config)"
            top = ".".join(str(p) for p in err["loc"][:1])
            origin = "command line" if (key in cli_keys or top in cli_keys) else (source or "defaults")
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                known = ", ".join(sorted(cls.model_fields))
                msg = f"unknown key (known keys: {known})"
            elif err["type"] == "missing":
                msg = "required key is missing"
            elif "input" in err and err["type"] not in ("value_error",):
                msg = f"{msg} (got {err['input']!r})"
            lines.append(f"  {key} [{origin}]: {msg}")
        where = f" in {source}" if source else ""
        raise ConfigError(f"invalid {cls.__name__}{where}:\n" + "\n".join(lines)) from None


def save_config(cfg: BaseConfig, run_dir: str | os.PathLike) -> Path:
    """Write the resolved config as ``config.yaml`` in the run directory (reloadable as is)."""
    out = Path(run_dir) / "config.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    data = cfg.model_dump(mode="json")
    out.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return out


def describe_fields(cls: type[BaseConfig]) -> str:
    """The ``--help`` text of a stage: every key, its type, default and docstring."""
    lines = []
    for name, field in cls.model_fields.items():
        ann = getattr(field.annotation, "__name__", None) or str(field.annotation).replace("typing.", "")
        default = "required" if field.is_required() else f"default: {field.get_default(call_default_factory=True)!r}"
        lines.append(f"  {name} ({ann}; {default})")
        if field.description:
            lines.append("      " + " ".join(field.description.split()))
    return "\n".join(lines)
