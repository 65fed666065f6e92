"""Config of `rlhf label judge`: AI judges answering a feedback project's queue.

``judge:`` is one spec whose ``kind`` picks the class: ``reward_model`` (a directory written by
`rlhf reward`), ``function`` (``module:function``, pointwise or pairwise), ``local_lm`` (a Hugging Face
causal LM prompted as a pairwise judge) or ``openai`` (an OpenAI-compatible chat-completions server).
Each kind is a strict class of its own, so a key of another kind is an error naming it. The spec's
hash (:func:`rlhfkit.feedback.judges.base.spec_hash`) covers what changes an answer, not transport
settings such as concurrency or the rate limit.
"""

from __future__ import annotations

import os
import string
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from rlhfkit.config.base import REWARD_FN, BaseConfig, RunConfig, check_model_path, is_planned

DEFAULT_TEMPLATE = (
    "Which response answers the prompt better?\n\n[Prompt]\n{prompt}\n\n[Response A]\n{response_a}\n\n"
    "[Response B]\n{response_b}\n\nAnswer with a single letter, A or B.")
TEMPLATE_FIELDS = ("prompt", "response_a", "response_b")


def check_template(value: str, key: str) -> str:
    """A prompt template with exactly the fields {prompt}, {response_a}, {response_b} (literal braces
    doubled, as in str.format): a missing field would hide a response from the judge."""
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
    except ValueError as e:
        raise ValueError(f"{key} is not a valid format string ({e}); write literal braces as "
                         "{{{{ }}}}") from None
    unknown = sorted(fields - set(TEMPLATE_FIELDS))
    missing = [f for f in TEMPLATE_FIELDS if f not in fields]
    if unknown or missing:
        raise ValueError(f"{key} must use exactly {{prompt}}, {{response_a}} and {{response_b}}"
                         + (f"; unknown: {unknown}" if unknown else "")
                         + (f"; missing: {missing}" if missing else ""))
    return value


def _check_labels(v: list[str], key: str) -> list[str]:
    if len(v) != 2 or v[0] == v[1] or not all(isinstance(x, str) and x for x in v):
        raise ValueError(f"{key} must be two different non-empty strings (the answer for A, then for B), "
                         f"got {v}")
    return v


class _JudgeSpec(BaseConfig):
    # Keys that only change how answers are fetched, not what they are: left out of the spec hash, so
    # a resumed run may change them and still reuse every journaled answer.
    transport_keys: ClassVar[tuple[str, ...]] = ("batch_size", "device")

    batch_size: int = Field(16, gt=0)
    """Rows (or prompts) per forward pass or function call."""


class RewardModelJudge(_JudgeSpec):
    """A reward-model directory: P(A) = sigmoid(r_A - r_B) (Bradley-Terry on its normalised scores)."""

    kind: Literal["reward_model"]
    path: str
    """Directory written by `rlhf reward` (an ensemble directory scores with the members' mean)."""

    max_length: int = Field(512, gt=0)
    """Prompt + response tokens read (longer prompts are cut from the left)."""

    device: str = "cpu"
    """torch device to score on."""

    @field_validator("path")
    @classmethod
    def _dir(cls, v: str) -> str:
        path = os.path.expanduser(v)
        if is_planned(path):
            return path
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ValueError(f"'{v}' is not a reward-model directory (no config.json)")
        return path


class FunctionJudge(_JudgeSpec):
    """A Python function: pointwise ``(prompts, completions) -> scores`` (P(A) = sigmoid(s_A - s_B),
    rankings by score) or pairwise ``(prompts, completions_a, completions_b) -> P(A)`` per row."""

    kind: Literal["function"]
    function: str
    """`module:function`, importable (installed, or on PYTHONPATH)."""

    mode: Literal["pointwise", "pairwise"]
    """`pointwise`: one score per completion; `pairwise`: one probability in [0, 1] that A is better."""

    @field_validator("function")
    @classmethod
    def _fn(cls, v: str) -> str:
        if not REWARD_FN.match(v):
            raise ValueError(f"must be 'module:function', got {v!r}")
        return v


class _PromptedJudge(_JudgeSpec):
    template: str = DEFAULT_TEMPLATE
    """The judge's user message: {prompt}, {response_a}, {response_b} (literal braces doubled)."""

    system: str | None = None
    """Optional system message before the template."""

    labels: list[str] = ["A", "B"]
    """The answers meaning "A is better" and "B is better"; the preference is read from their
    probabilities as the judge's next token."""

    @field_validator("template")
    @classmethod
    def _template(cls, v: str) -> str:
        return check_template(v, "the template")

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: list[str]) -> list[str]:
        return _check_labels(v, "labels")


class LocalLMJudge(_PromptedJudge):
    """A local Hugging Face causal LM as a pairwise judge. The rendered prompt (through the tokenizer's
    chat template when it has one, with the generation prompt) is run once; P(A) is the softmax over
    the next-token logits of the two labels, each of which must be a single token."""

    kind: Literal["local_lm"]
    model: str
    """Model directory or hub id (with its tokenizer)."""

    batch_size: int = Field(8, gt=0)
    """Prompts per forward pass (left-padded)."""

    max_length: int = Field(2048, gt=0)
    """Longest rendered prompt in tokens; a longer one is an error (cutting it would hide a response)."""

    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights' dtype."""

    device: str = "cpu"
    """torch device."""

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        return check_model_path(v, "judge.model")


class OpenAIJudge(_PromptedJudge):
    """An OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp, TGI servers). Asked with
    temperature 0 and logprobs; P(A) comes from the label tokens' `top_logprobs` when the server
    returns them, else from the first label in the answer text (1 or 0)."""

    transport_keys: ClassVar[tuple[str, ...]] = (
        "batch_size", "concurrency", "requests_per_second", "max_retries", "backoff_seconds",
        "max_backoff_seconds", "timeout_seconds", "api_key_env")
    removed_keys: ClassVar[dict[str, str]] = {
        "api_key": "never put an API key in a config file: set api_key_env to the name of the environment "
                   "variable that holds it"}

    kind: Literal["openai"]
    base_url: str
    """Server root including the API version, e.g. http://127.0.0.1:8000/v1 (`/chat/completions` is added)."""

    model: str
    """Model name sent with every request."""

    api_key_env: str | None = "OPENAI_API_KEY"
    """Environment variable holding the API key (sent as a Bearer token); null for a server without auth."""

    batch_size: int = Field(64, gt=0)
    """Tasks whose questions are sent before the queue hands them out (the window of concurrent work)."""

    concurrency: int = Field(4, gt=0)
    """Requests in flight at once."""

    requests_per_second: float = Field(5.0, gt=0)
    """Rate limit over all threads, retries included."""

    max_retries: int = Field(5, ge=0)
    """Retries of one request after 429, 5xx, a timeout or a connection error; then the run stops."""

    backoff_seconds: float = Field(1.0, ge=0)
    """First retry delay; doubled each retry (a longer Retry-After from the server wins)."""

    max_backoff_seconds: float = Field(60.0, ge=0)
    """Longest delay between two tries."""

    timeout_seconds: float = Field(60.0, gt=0)
    """Per-request timeout."""

    max_tokens: int = Field(1, gt=0)
    """Tokens the server may generate: 1 reads the label's logprobs at the first position."""

    top_logprobs: int = Field(5, ge=0, le=20)
    """Alternatives asked per token (0: do not ask for logprobs; the answer text decides)."""

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {v!r}")
        return v.rstrip("/")


JUDGE_KINDS: dict[str, type[_JudgeSpec]] = {
    "reward_model": RewardModelJudge, "function": FunctionJudge, "local_lm": LocalLMJudge,
    "openai": OpenAIJudge}
JudgeSpec = RewardModelJudge | FunctionJudge | LocalLMJudge | OpenAIJudge


def _judge_error(err: Any) -> str:
    key = ".".join(["judge", *(str(p) for p in err["loc"])])
    if err["type"] == "extra_forbidden":
        return f"{key}: unknown key for this kind"
    if err["type"] == "missing":
        return f"{key}: required key is missing"
    return f"{key}: {err['msg'].removeprefix('Value error, ')}"


class LabelJudgeConfig(RunConfig):
    """AI judges answer a project's queue through the store, asked in both orders (`rlhf label judge`)."""

    output_dir: str = "runs/label-judge"
    """Directory for config.yaml, summary.json and the answer journal (judge_journal.jsonl)."""

    store: str
    """Feedback store: a SQLAlchemy URL or a file path (SQLite)."""

    project: str
    """Project whose queue the judge answers."""

    name: str | None = None
    """Annotator name of the judge (role `judge`); default `judge-<first 8 hex of the spec hash>`. A
    name already recorded with another spec is an error: one annotator, one judge."""

    judge: JudgeSpec = Field(discriminator="kind")
    """The judge: a mapping with `kind` and that kind's keys (rlhfkit/config/judge.py documents each):
    reward_model: path, max_length, batch_size, device; function: function, mode (pointwise | pairwise),
    batch_size; local_lm: model, template, system, labels, batch_size, max_length, dtype, device; openai:
    base_url, model, api_key_env, template, system, labels, concurrency, requests_per_second,
    max_retries, backoff_seconds, max_backoff_seconds, timeout_seconds, max_tokens, top_logprobs,
    batch_size. Templates use {prompt}, {response_a}, {response_b}; labels default to [A, B]."""

    inconsistent: Literal["weakest", "tie_bad", "skip"] = "weakest"
    """A verdict whose winner flips with the order shown: `weakest` records the order-averaged winner at
    strength 1 ("negligibly better"); `tie_bad` records a tie; `skip` passes the task to others."""

    strength_bins: list[float] = [0.2, 0.5, 0.8]
    """Increasing edges of the confidence |2 P(A) - 1| between strengths 1|2|3|4."""

    max_tasks: int | None = Field(None, gt=0)
    """Stop after judging this many tasks (default: until the queue has nothing left for the judge)."""

    @field_validator("judge", mode="before")
    @classmethod
    def _judge_kind(cls, v: Any) -> Any:
        # Validated here rather than by the union, so an error names `judge.<key>` without the tag.
        if isinstance(v, BaseModel):
            return v
        if not isinstance(v, dict):
            raise ValueError(f"judge must be a mapping with a `kind` ({', '.join(JUDGE_KINDS)}), got {v!r}")
        spec_cls = JUDGE_KINDS.get(v.get("kind"))
        if spec_cls is None:
            raise ValueError(f"judge.kind must be one of {', '.join(JUDGE_KINDS)}, got {v.get('kind')!r}")
        try:
            return spec_cls.model_validate(v)
        except ValidationError as e:
            raise ValueError("; ".join(_judge_error(err) for err in e.errors())) from None

    @field_validator("strength_bins")
    @classmethod
    def _bins(cls, v: list[float]) -> list[float]:
        if len(v) != 3 or any(b <= a for a, b in zip(v, v[1:])) or v[0] < 0 or v[-1] > 1:
            raise ValueError(f"strength_bins must be 3 increasing edges in [0, 1], got {v}")
        return v

    @model_validator(mode="after")
    def _name(self) -> LabelJudgeConfig:
        if self.name is not None and not self.name.strip():
            raise ValueError("name must not be blank")
        return self
