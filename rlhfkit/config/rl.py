"""Config of online RL (`rlhf ppo`: PPO with a critic, or critic-free RLOO / GRPO)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from rlhfkit.config.base import (GOLD_RENAMED, REWARD_FN, Alarm, BaseConfig, LrScheduler, check_gold_spec,
                                 check_model_path, check_reward_spec)
from rlhfkit.config.train import TrainConfig

_TRUNCATED_SAMPLING = ("RL rollouts sample from the full temperature softmax, whose log-probs are the "
                       "ones trained on; top-k / top-p sampling would make PPO, RLOO and GRPO off-policy, "
                       "so these keys do not exist for this stage (use temperature)")


class AuditWeights(BaseConfig):
    """Weights of the suspicion score (rlhfkit/rl/audit.py): each signal is standardised within the
    rollout batch, so the weights compare like with like."""

    proxy: float = Field(1.0, ge=0.0)
    """The proxy reward (what the policy is optimising)."""

    gap: float = Field(1.0, ge=0.0)
    """How much more the proxy likes the sample than the gold / judge does (needs `gold`)."""

    length: float = Field(0.5, ge=0.0)
    """Response length in tokens (length is the classic reward hack)."""

    similarity: float = Field(0.5, ge=0.0)
    """Mean bigram similarity to the other samples of the batch (low diversity, a collapse sign)."""


class AuditSimulate(BaseConfig):
    """Simulated annotators answering each audit round at once (the demo); people answer in the web UI."""

    reward: str = "gold"
    """The reward they judge by: "gold" (the synthetic world's) or "module:function" (prompts,
    completions) -> list of floats."""

    temperature: float = Field(0.1, ge=0.0)
    """Bradley-Terry temperature on reward differences (0 = always the higher reward)."""

    seed: int = 0
    """Seed of the simulated annotators' draws (with the step: a re-run gives the same answers)."""

    @field_validator("reward")
    @classmethod
    def _reward_spec(cls, v: str) -> str:
        return check_reward_spec(v, "audit.simulate.reward")


class AuditConfig(BaseConfig):
    """The human audit queue of an RL run (rlhfkit/rl/audit.py)."""

    store: str
    """Feedback store: a SQLite file path or a SQLAlchemy URL (the pipeline's feedback.db to have the
    audit judgements join the next round's preference data)."""

    project: str
    """Feedback project the audit pairs go to (created if missing)."""

    every: int = Field(10, gt=0)
    """Audit every this many RL steps (steps every, 2 every, ...)."""

    k: int = Field(4, gt=0)
    """Samples per audit round: the k most suspicious of the rollout batch, each paired with a
    reference-policy sample for the same prompt."""

    annotators_per_task: int = Field(1, gt=0)
    """Annotators each audit pair needs (also the new project's default)."""

    min_answers: int = Field(4, gt=0)
    """Judgements a round needs before its agreement can raise the audit alarm."""

    tag: str = "audit"
    """Prefix of the model ids of audit responses: `<tag>-step-N/policy` and `<tag>-step-N/reference`."""

    weights: AuditWeights = AuditWeights()
    """Suspicion score weights: proxy, gap, length, similarity (see AuditWeights)."""

    simulate: AuditSimulate | None = None
    """Answer each round at once with simulated annotators ({reward, temperature, seed}); null: people
    answer later in `rlhf label serve`, and each round reads what earlier rounds got."""

    @field_validator("tag")
    @classmethod
    def _tag(cls, v: str) -> str:
        if not v.strip() or "/" in v:
            raise ValueError(f"audit.tag must be non-blank without '/', got {v!r}")
        return v


class PPOConfig(TrainConfig):
    """Online RL from a reward (`rlhf ppo`): PPO with a critic, or critic-free RLOO / GRPO.

    `data` is a prompt file (any format with a prompt column). A step samples
    `prompts_per_device` prompts on each process, `num_samples` episodes each, and takes one
    optimizer step per minibatch of `mini_batch_size` episodes, `ppo_epochs` times."""

    removed_keys: ClassVar[dict[str, str]] = {
        "top_k": _TRUNCATED_SAMPLING,
        "top_p": _TRUNCATED_SAMPLING,
        "per_device_batch_size": "use prompts_per_device (prompts each process samples per RL step)",
        "gradient_accumulation_steps": "PPO does not accumulate: it takes one optimizer step per minibatch "
                                       "of mini_batch_size episodes (set mini_batch_size / ppo_epochs)",
        "eval_batch_size": "PPO samples each process's evaluation prompts in one batch (see eval_prompts)",
        "gold_reward": GOLD_RENAMED,
    }

    output_dir: str = "runs/ppo"
    """Run directory: resolved config, metrics.jsonl, checkpoints, best/, final model, summary.json."""

    max_length: int = Field(512, gt=0)
    """Maximum tokens of prompt + response when the reward model scores a rollout (responses are
    bounded by `max_new_tokens`, prompts by `max_prompt_length`)."""

    learning_rate: float = Field(1e-5, gt=0.0)
    """Peak learning rate of the policy's AdamW."""

    adam_eps: float = Field(1e-5, gt=0.0)
    """AdamW epsilon (1e-5 as in the PPO-RLHF reference code, RLHF-DETAILS item 18)."""

    lr_scheduler: LrScheduler = "linear"
    """Decay after warmup over all PPO optimizer steps (linear to 0, item 18)."""

    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of optimizer steps spent warming the learning rate up linearly from 0."""

    prompts_per_device: int = Field(16, gt=0)
    """Prompts each process samples per RL step (each gives `num_samples` episodes); one epoch
    of `num_epochs` is len(data) / (prompts_per_device x processes) steps."""

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

    rollout_engine: Literal["loop", "hf", "vllm"] = "loop"
    """What samples rollouts (all from the same full temperature softmax; log-probs always come
    from the training forward): 'loop', our own KV-cache loop that prefills each prompt once for
    its `num_samples` samples and drops finished sequences from the batch (1.5-2x faster than
    'hf' on CPU); 'hf', `model.generate` (the reference the others are tested against); 'vllm',
    a colocated vLLM engine with the policy's weights synced after every update (GPU; needs the
    optional `vllm` package)."""

    vllm_gpu_memory_utilization: float = Field(0.3, gt=0.0, le=1.0)
    """Share of GPU memory the vLLM engine may take (KV cache included) with
    `rollout_engine: vllm`; the rest stays for training."""

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

    gold: str | None = None
    """Gold reward to monitor, never trained on: every rollout and evaluation is also scored with it,
    logging gold_reward, proxy_gold_gap and eval_gold (and keep_best / the gap alarm use it).
    'synthetic' (the synthetic world's gold), 'module:function' with signature (prompts, completions)
    -> list[float] (TRL's reward_funcs signature, with **kwargs, works too), or a reward-model
    directory from `rlhf reward` used as a held-out judge (its stored offset/scale applied)."""

    max_kl: float | None = Field(None, gt=0.0)
    """Alarm when the mean sequence KL to the reference exceeds this; null disables."""

    kl_alarm: Alarm = "stop"
    """What the `max_kl` alarm does: log a warning, or stop the run (checkpoint and best/ kept)."""

    gap_alarm_steps: int = Field(0, ge=0)
    """Alarm when the proxy - gold reward gap widens this many steps in a row (reward hacking;
    needs `gold`); 0 disables."""

    gap_alarm: Alarm = "warn"
    """What the gap alarm does: log a warning, or stop the run (checkpoint and best/ kept)."""

    collapse_alarm: Literal["off", "warn", "stop"] = "warn"
    """Mode-collapse alarm: log a warning, stop the run (checkpoint and best/ kept), or off. It fires
    when batch distinct-2 or token entropy falls below `collapse_threshold` of its value at the
    first step, or one completion takes more than 1 - `collapse_threshold` of the batch."""

    collapse_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    """Fraction of the starting diversity below which the collapse alarm fires (see `collapse_alarm`)."""

    keep_best: bool = True
    """Save the policy of the best rollout (gold reward with `gold`, else proxy) to best/."""

    eval_prompts: int = Field(32, ge=0)
    """Held-out prompts sampled at each evaluation (proxy, and gold with `gold`); 0 disables."""

    eval_num_samples: int = Field(1, gt=0)
    """Samples per held-out prompt at each evaluation (more samples, less noisy eval means)."""

    audit: AuditConfig | None = None
    """Human audit queue: every `every` steps, the `k` samples the monitors find most suspicious go to a
    feedback project as pairs against the reference policy's sample for the same prompt
    ({store, project, every, k, annotators_per_task, min_answers, tag, weights, simulate}); null: off."""

    audit_alarm: Literal["off", "warn", "stop"] = "warn"
    """What happens when people prefer the reward model's top samples to the reference's less often than
    `audit_threshold` (needs `audit`): log a warning, stop the run (checkpoint and best/ kept), or off."""

    audit_threshold: float = Field(0.5, ge=0.0, le=1.0)
    """Agreement (share of audit judgements preferring the policy sample; ties half) below which the
    audit alarm fires."""

    ref_model: str | None = None
    """Reference policy of the KL penalty (default: `model`). Iterated RLHF starts a round from the
    previous round's policy while the KL keeps anchoring to the SFT model."""

    @field_validator("reward_model", "value_model", "ref_model")
    @classmethod
    def _rm_exists(cls, v: str | None, info: Any) -> str | None:
        return None if v is None else check_model_path(v, info.field_name)

    @field_validator("audit_alarm", "collapse_alarm", mode="before")
    @classmethod
    def _alarm_off(cls, v: object) -> object:
        # YAML 1.1 reads a bare `off` (audit_alarm=off on the command line) as False.
        return "off" if v is False else v

    @field_validator("gold", mode="before")
    @classmethod
    def _gold_spec(cls, v: object) -> str | None:
        return check_gold_spec(v, "gold")

    @field_validator("reward_functions")
    @classmethod
    def _fn_spec(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if s != "gold" and not REWARD_FN.match(s)]
        if bad:
            raise ValueError(f"reward functions must be 'module:function' or 'gold', got {bad}")
        return v

    @model_validator(mode="after")
    def _ppo_consistent(self) -> PPOConfig:
        n_sources = int(self.reward_model is not None) + len(self.reward_functions)
        if n_sources == 0:
            raise ValueError("give a reward: reward_model and/or reward_functions")
        if self.reward_weights is not None and len(self.reward_weights) != n_sources:
            raise ValueError(f"reward_weights has {len(self.reward_weights)} entries for {n_sources} "
                             "reward sources")
        if self.estimator != "ppo" and self.num_samples is not None and self.num_samples < 2:
            raise ValueError(f"estimator '{self.estimator}' needs num_samples >= 2")
        if self.kl_in == "loss" and self.estimator == "ppo":
            raise ValueError("kl_in 'loss' is for rloo / grpo; PPO puts the KL in the reward")
        if self.scale_rewards != "group" and self.estimator != "grpo":
            raise ValueError(f"scale_rewards is a GRPO setting; estimator is '{self.estimator}'")
        if "vllm_gpu_memory_utilization" in self.model_fields_set and self.rollout_engine != "vllm":
            raise ValueError(f"vllm_gpu_memory_utilization is for rollout_engine: vllm; rollout_engine is "
                             f"'{self.rollout_engine}'")
        if self.lora_r and self.lora_dropout > 0:
            # A LoRA branch with dropout makes two forwards of the same weights differ: the first
            # PPO ratio is then not 1 and the KL to the adapter-off reference is noise.
            raise ValueError("lora_dropout must be 0 for RL (item 7: with dropout the policy ratio of "
                             "the first minibatch is not 1)")
        if self.ref_model and self.lora_r:
            raise ValueError("ref_model with LoRA: the reference is the adapter-off policy; drop one of them")
        if self.audit_alarm == "stop" and self.audit is None:
            raise ValueError("audit_alarm 'stop' needs an audit queue: set audit: {store, project, ...}")
        return self

    @property
    def samples_per_prompt(self) -> int:
        return self.num_samples or (1 if self.estimator == "ppo" else 4)

