"""Configs of the human-feedback stages: `rlhf collect` and `rlhf label simulate | export | serve`."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, field_validator, model_validator

from rlhfkit.config.base import BaseConfig, RunConfig, check_model_path, check_reward_spec, is_planned


class CollectConfig(RunConfig):
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
    select=uncertain (and only for it)."""

    @model_validator(mode="after")
    def _one_source(self) -> CollectConfig:
        if self.select == "uncertain":
            if self.task_size != 2:
                raise ValueError(f"select=uncertain ranks pairs: it needs task_size=2, got {self.task_size}")
            if self.selection_model is None:
                raise ValueError("select=uncertain needs `selection_model` (a reward-model directory)")
        elif self.selection_model is not None:
            raise ValueError(f"selection_model scores candidates for select=uncertain only (select is "
                             f"'{self.select}')")
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
        if v is not None and not (os.path.isdir(os.path.expanduser(v)) or is_planned(os.path.expanduser(v))):
            raise ValueError(f"selection_model '{v}' is not an existing directory")
        return None if v is None else os.path.expanduser(v)


class LabelSimulateConfig(RunConfig):
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
    """|reward difference| below this is a tie: both good if both rewards exceed the project median,
    else both bad."""

    strength_bins: list[float] = [0.1, 0.3, 0.6]
    """Increasing |reward difference| edges between strengths 1|2|3|4."""

    max_rounds: int = Field(100000, gt=0)
    """Upper bound on queue passes (a guard: the queue normally empties much sooner)."""

    @field_validator("reward")
    @classmethod
    def _reward_spec(cls, v: str) -> str:
        return check_reward_spec(v, "reward")

    @field_validator("strength_bins")
    @classmethod
    def _bins(cls, v: list[float]) -> list[float]:
        if len(v) != 3 or any(b <= a for a, b in zip(v, v[1:])) or v[0] < 0:
            raise ValueError(f"strength_bins must be 3 increasing non-negative edges, got {v}")
        return v


class LabelExportConfig(BaseConfig):
    """Export a project's judgements as a preference dataset (`rlhf label export`). The data go to
    `output` and nothing is random, so there is no `output_dir` or `seed`."""

    store: str
    """Feedback store: a SQLAlchemy URL or a file path (SQLite)."""

    project: str
    """Project to export."""

    output: str
    """A `.jsonl` file, or a directory written with `datasets.Dataset.save_to_disk`."""

    aggregate: Literal["judgement", "majority", "dawid_skene"] = "judgement"
    """One row per judgement; one row per task with the majority label and its `agreement`; or
    (`dawid_skene`) one row per task weighted by each annotator's estimated reliability (Dawid-Skene
    EM), oriented by the posterior with `label_confidence` = P(chosen is better), a soft label that
    `rlhf reward` and `rlhf dpo` train on; the summary lists each annotator's estimated accuracy."""

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

    exclude_below: float | None = Field(None, ge=0.0, le=1.0)
    """Drop every judgement of annotators whose accuracy on the project's gold questions is under this
    (e.g. 0.7); the summary says how many annotators and judgements were dropped. Annotators who
    judged no gold question are kept. Needs gold questions (marked on the project's admin page)."""

    judges: Literal["all", "calibrated", "none"] = "all"
    """AI judges' judgements (annotators with role `judge`): `all` keeps them, `none` drops them,
    `calibrated` keeps a judge only if its Cohen's kappa with the human majority is at least the
    human-human kappa minus `judge_margin` (rlhfkit.feedback.calibration); the summary names every
    judge, kept or dropped, with its kappa, the human kappa and the margin."""

    judge_margin: float = Field(0.1, ge=0.0, le=2.0)
    """How far below the human-human kappa a judge's kappa may be and still be kept (`judges=calibrated`)."""

    judge_min_tasks: int = Field(20, ge=2)
    """`judges=calibrated` drops a judge sharing fewer tasks than this with people (kappa over fewer is
    mostly noise), and needs two people sharing this many to estimate the human-human kappa."""

    @field_validator("margins")
    @classmethod
    def _four(cls, v: list[float]) -> list[float]:
        if len(v) != 4:
            raise ValueError(f"margins needs one value per strength 1-4, got {len(v)}")
        return v


class LabelServeConfig(BaseConfig):
    """Serve the annotator web UI, its JSON API and the admin pages (`rlhf label serve`). Everything
    lives in the store, so there is no `output_dir`; nothing is seeded."""

    store: str = "feedback.db"
    """Feedback store: a SQLAlchemy URL or a file path (SQLite); created (or upgraded) if needed."""

    host: str = "127.0.0.1"
    """Interface to listen on; the default serves this machine only (put a TLS proxy in front to
    expose it)."""

    port: int = Field(8000, ge=0, le=65535)
    """TCP port to listen on."""

    create_admin: str | None = None
    """Create an admin account with this name before serving (skipped with a message if it exists)."""

    create_admin_password: str | None = None
    """Password of `create_admin`; if not given, one is generated and printed once."""

    trusted_proxies: list[str] = Field(default_factory=list)
    """Addresses of the reverse proxies in front of the server (e.g. [127.0.0.1] behind a local
    nginx): only their `X-Forwarded-For` header is believed for the client address that the login
    throttle counts. Empty (default): the header is ignored, so a client cannot spoof its way past
    the throttle."""
