"""Configs of the supervised and preference training stages (`rlhf sft`, `rlhf reward`, `rlhf dpo`),
the fields every training stage shares (`TrainConfig`, also the base of PPO in rl.py), and
`rlhf score`."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from rlhfkit.config.base import (GOLD_RENAMED, BaseConfig, LrScheduler, RunConfig, check_gold_spec,
                                 check_model_path)


class TrainConfig(RunConfig):
    """Model, data, optimisation, logging and checkpoint fields read by every training stage."""

    model: str
    """Causal LM to start from: a local Hugging Face directory or a hub id."""

    tokenizer: str | None = None
    """Tokenizer directory or hub id; defaults to `model`."""

    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype of the trained weights (and of the optimizer's copy of them). Keep float32 and use
    `mixed_precision: bf16` for bf16 compute: bf16 weights lose updates smaller than 2^-9 of a
    weight and make log-prob ratios noisy."""

    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    """Autocast of the forward passes (accelerate), the weights and optimizer staying in `dtype`:
    'no' computes in fp32; 'bf16' runs matmuls in bf16 on GPU or CPU, with log-softmax and every
    loss in fp32. Every forward of a stage shares it (policy, reference, rollout sampling and
    log-probs, critic), so DPO's step-0 loss is log 2 and PPO's first ratio 1 as in fp32; losses
    stay within 3e-3 relative of fp32 over 4 steps on the test model (tests/test_bf16.py). It pays
    where the hardware has bf16 arithmetic (GPUs; CPUs with AVX512-BF16 or AMX: about 2x on a 20M
    model on this project's EPYC, nothing on a 0.5M one, docs/benchmarks.md); elsewhere (not measured)
    the casts may cost more than they save. 'fp16' is GPU only (refused on CPU, where accelerate would
    quietly compute in fp32)."""

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

    lr_scheduler: LrScheduler = "cosine"
    """Decay after warmup: linear or cosine to 0, or constant."""

    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    """Share of optimizer steps spent warming the learning rate up linearly from 0."""

    num_epochs: float = Field(1.0, gt=0.0)
    """Passes over the training data (fractions allowed); ignored when `max_steps` is set."""

    max_steps: int | None = Field(None, gt=0)
    """Total optimizer steps; overrides `num_epochs`."""

    max_grad_norm: float | None = Field(1.0, gt=0.0)
    """Clip the global gradient norm to this value; null disables clipping."""

    eval_every: int = Field(0, ge=0)
    """Evaluate every N optimizer steps (0: only at the end)."""

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


class MicroBatchConfig(BaseConfig):
    """Batching of the stages that step on a fixed number of examples, accumulated over
    micro-batches (SFT, reward, DPO). PPO is not one: it counts prompts per step
    (`prompts_per_device`) and steps once per minibatch of episodes, with nothing accumulated."""

    per_device_batch_size: int = Field(8, gt=0)
    """Sequences per process per micro-batch."""

    gradient_accumulation_steps: int = Field(1, gt=0)
    """Micro-batches per optimizer step (the global batch is this x batch size x processes)."""

    eval_batch_size: int = Field(16, gt=0)
    """Sequences per process per evaluation batch."""


class SFTConfig(MicroBatchConfig, TrainConfig):
    """Supervised fine-tuning on demonstrations (`rlhf sft`)."""

    output_dir: str = "runs/sft"
    """Run directory: resolved config, metrics.jsonl, checkpoints, final model, summary.json."""

    completion_only_loss: bool = True
    """Train on completion tokens only (prompt tokens masked); false trains on the whole sequence."""

    packing: bool = False
    """Concatenate examples into full `max_length` blocks (no padding waste). Attention is
    restricted to each example by resetting position ids and a block-diagonal mask."""

    padding_free: bool = True
    """Bin-pack each micro-batch's examples into rows as wide as the longest of them, with
    per-example position ids and a block-diagonal causal mask, instead of padding them: the same
    examples, loss and normalisation, so the result equals padded training up to float rounding,
    with less compute on mixed lengths. Applies when `packing` is off (packed blocks have no
    padding to remove). All eight families of the conformance matrix take the 4D mask (flash
    attention reads the boundaries from the positions instead); set false for a model that does not."""

    truncation_side: Literal["left", "right"] = "right"
    """Which end of an over-long sequence is cut: 'right' drops the completion's tail, 'left'
    drops the prompt's beginning (keeping the completion)."""

    sample_prompts: int = Field(0, ge=0)
    """After training, sample completions for this many held-out prompts into samples.jsonl."""

    sample_max_new_tokens: int = Field(48, gt=0)
    """Maximum new tokens per sample."""


class PairTrainConfig(MicroBatchConfig, TrainConfig):
    """Fields shared by the stages that train on preference pairs (reward model, DPO family)."""

    max_prompt_length: int | None = Field(None, gt=0)
    """Prompt tokens kept when a pair is too long (the prompt's end is kept); default max_length/2."""

    padding_free: bool = True
    """Bin-pack each micro-batch's sequences (chosen and rejected, or a prompt's ranked responses)
    into rows as wide as the longest of them, with per-example position ids and a block-diagonal
    causal mask, instead of padding them; scores and summed log-probs are gathered back per
    sequence. The micro-batches, losses and normalisation are unchanged, so the result equals
    padded training up to float rounding, with less compute on mixed lengths. All eight families
    of the conformance matrix take the 4D mask; set false for a model that does not (a reward
    model whose head gives no per-token scores stops with an error naming this key)."""


class RewardConfig(PairTrainConfig):
    """Reward-model training on preference pairs or rankings (`rlhf reward`)."""

    output_dir: str = "runs/reward"
    """Run directory: resolved config, metrics.jsonl, checkpoints, final model, summary.json."""

    learning_rate: float = Field(1e-5, gt=0.0)
    """Peak learning rate of AdamW."""

    lr_scheduler: LrScheduler = "linear"
    """Decay after warmup; the usual recipe is one epoch annealed linearly to 0 (RLHF-DETAILS item 4)."""

    data_format: Literal["auto", "pairs", "ranking"] = "auto"
    """'pairs' (prompt/chosen/rejected, optional margin, tie and label_confidence columns; the last is a
    soft label, trained on as a soft Bradley-Terry target), 'ranking' (K ranked responses per prompt,
    all C(K,2) pairs in one batch element weighted 1/C(K,2); order only), or 'auto' (ranking when the
    rows are rankings, else pairs)."""

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
    def _tie_param_valid(self) -> RewardConfig:
        if self.ties == "rao_kupper" and self.tie_param <= 1.0:
            raise ValueError("tie_param must be > 1 for Rao-Kupper ties")
        if self.use_margin and self.ties != "drop":
            raise ValueError(f"use_margin with ties '{self.ties}': the tie likelihoods have no margin term, "
                             "so the margins would be silently ignored; set ties=drop or use_margin=false")
        return self


class DPOConfig(PairTrainConfig):
    """Direct preference optimisation and its variants (`rlhf dpo`)."""

    removed_keys: ClassVar[dict[str, str]] = {"gold_reward": GOLD_RENAMED}

    output_dir: str = "runs/dpo"
    """Run directory: resolved config, metrics.jsonl, checkpoints, reference log-prob cache, final
    model, summary.json."""

    learning_rate: float = Field(5e-7, gt=0.0)
    """Peak learning rate of AdamW (DPO papers use about 5e-7 for 7B models; tiny models and LoRA
    need far more)."""

    loss_type: Literal["sigmoid", "ipo", "cdpo", "hinge", "simpo"] = "sigmoid"
    """'sigmoid': DPO on summed response log-probs; 'cdpo': DPO with label smoothing; 'hinge':
    SLiC-style relu(1 - beta h); 'ipo': IPO on length-normalised log-ratios; 'simpo': SimPO,
    reference-free and length-normalised (see rlhfkit/losses)."""

    beta: float = Field(0.1, gt=0.0)
    """Strength of the KL anchor to the reference: larger keeps the policy closer to it (DPO's
    beta, IPO's tau). For SimPO it scales the reward instead, and is much larger (about 2)."""

    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5)
    """cDPO: assumed probability that a preference label is flipped (loss_type 'cdpo' only). Rows with a
    soft label (`label_confidence` c, e.g. from `rlhf label export aggregate=dawid_skene`) are trained
    as cDPO with flip probability 1 - c under loss_type 'sigmoid', and with the two composed as
    independent flips under 'cdpo'."""

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

    gold: str | None = None
    """Gold reward of the evaluation samples (`eval_sample_prompts`), logged as eval_gold: 'synthetic'
    (the synthetic world's gold), 'module:function' with signature (prompts, completions) ->
    list[float] (TRL's reward_funcs signature, with **kwargs, works too), or a reward-model directory
    from `rlhf reward` used as a held-out judge (its stored offset/scale applied)."""

    @field_validator("gold", mode="before")
    @classmethod
    def _gold_spec(cls, v: object) -> str | None:
        return check_gold_spec(v, "gold")

    @model_validator(mode="after")
    def _variant_keys_fit_loss_type(self) -> DPOConfig:
        if self.label_smoothing > 0 and self.loss_type != "cdpo":
            raise ValueError(f"label_smoothing is used by loss_type 'cdpo' only "
                             f"(loss_type is '{self.loss_type}')")
        if self.loss_type == "cdpo" and self.label_smoothing == 0:
            raise ValueError("loss_type 'cdpo' needs label_smoothing > 0 (with 0 it is plain 'sigmoid')")
        return self


class ScoreConfig(BaseConfig):
    """Score prompt/response rows with a reward model (`rlhf score`). Scoring writes only
    `output` and draws no random numbers, so it has no `output_dir` or `seed`."""

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
