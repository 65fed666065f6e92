"""What every stage config shares: strict pydantic settings, named errors for keys that are not
on a stage, the model-path check and the field types several stages use."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError

# A hub id is "name" or "org/name" made of these characters; anything else must exist locally.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
# A Python callable given as text: "package.module:function".
REWARD_FN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")

# Error type of keys that exist elsewhere but not on this config (removed, renamed, or set by the
# pipeline): loading.config_from_dict reports them under those keys, not as "unknown key".
MISPLACED_KEY = "misplaced_key"

LrScheduler = Literal["linear", "cosine", "constant"]
Alarm = Literal["warn", "stop"]


# Paths that do not exist yet but will before they are read: a pipeline plan's outputs (its world
# directory, the SFT model, each round's reward model ...), so the plan validates every stage config
# with the paths it will really use (rlhfkit/pipeline/plan.py).
_PLANNED: ContextVar[frozenset[str] | set[str]] = ContextVar("planned_paths", default=frozenset())


@contextmanager
def planned_paths(paths: Iterable[str] = ()) -> Iterator[set[str]]:
    """Within the block, ``check_model_path`` accepts the paths of the yielded set (add to it as
    outputs are planned) and anything under them."""
    planned = set(paths)
    token = _PLANNED.set(planned)
    try:
        yield planned
    finally:
        _PLANNED.reset(token)


def is_planned(path: str) -> bool:
    """Whether a pipeline plan being built creates ``path`` (or a directory above it)."""
    path = os.path.normpath(path)
    planned = (os.path.normpath(os.path.expanduser(p)) for p in _PLANNED.get())
    return any(path == p or path.startswith(p + os.sep) for p in planned)


def check_model_path(value: str, key: str) -> str:
    """Accept an existing local directory (or one a pipeline plans to create) or something shaped
    like a hub id; reject the rest.

    A path that looks local (absolute, ``./``, ``~``, or with more than one ``/``) but does not
    exist is the common typo; catching it here means no stage starts work on a missing model.
    """
    expanded = os.path.expanduser(value)
    if os.path.exists(expanded) or is_planned(expanded):
        return expanded
    looks_local = value.startswith(("/", ".", "~")) or value.count("/") > 1 or "\\" in value
    if looks_local or not _HUB_ID.match(value):
        raise ValueError(f"model path '{value}' does not exist (for '{key}')")
    return value


def check_reward_spec(value: str, key: str) -> str:
    """'gold' or 'module:function' (imported when the stage runs, not here)."""
    if value != "gold" and not REWARD_FN.match(value):
        raise ValueError(f"{key} must be 'gold' or 'module:function', got {value!r}")
    return value


GOLD_FORMS = "'synthetic', 'module:function' (e.g. my_pkg.judge:score) or a reward-model directory"
# The one message for the boolean gold keys of earlier versions (`gold_reward: true`, `gold: true`).
GOLD_RENAMED = "use gold: synthetic (or module:function, or a reward-model directory)"


def check_gold_spec(value: Any, key: str = "gold") -> str | None:
    """A gold spec (rlhfkit/gold.py): None, "synthetic", "module:function" (imported when the stage
    runs, not here) or a reward-model directory that exists or that a pipeline plans."""
    if value is None:
        return None
    if isinstance(value, bool):  # `gold: true` was the synthetic world's gold before gold took a spec
        raise ValueError(f"{key}: true/false is no longer a value: {GOLD_RENAMED}; null for none")
    if not isinstance(value, str):
        raise ValueError(f"{key} must be {GOLD_FORMS}, got {value!r}")
    if value == "synthetic" or REWARD_FN.match(value):
        return value
    path = check_model_path(value, key)  # a local-looking path that does not exist fails here
    if is_planned(path):
        return path
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ValueError(f"{key}: '{value}' has no config.json: not a reward-model directory")
        return path
    if os.path.exists(path):
        raise ValueError(f"{key}: '{value}' is a file, not a reward-model directory")
    raise ValueError(f"{key} must be {GOLD_FORMS}; '{value}' is none of them (no such directory)")


def misplaced_key(keys: list[str], message: str) -> PydanticCustomError:
    """The error for ``keys`` that are known but do not belong here; ``message`` says why."""
    return PydanticCustomError(MISPLACED_KEY, "{message}", {"keys": keys, "message": message})


class BaseConfig(BaseModel):
    """Strict settings of every config: unknown keys are errors, field docstrings are the docs."""

    model_config = ConfigDict(
        extra="forbid",
        use_attribute_docstrings=True,
        validate_assignment=True,
        protected_namespaces=(),
    )

    # Keys a user may carry over from another stage (or an older version) that do not exist on
    # this one -> why, and what to use instead: they fail with that reason, not as unknown keys.
    removed_keys: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _no_removed_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            given = [k for k in cls.removed_keys if k in data]
            if given:
                reasons: dict[str, list[str]] = {}  # keys sharing a reason are named together ("top_k/top_p")
                for key in given:
                    reasons.setdefault(cls.removed_keys[key], []).append(key)
                raise misplaced_key(given, "; ".join(f"{'/'.join(ks)}: {why}" for why, ks in reasons.items()))
        return data


class RunConfig(BaseConfig):
    """A stage that writes a run directory and draws random numbers."""

    output_dir: str = "runs/run"
    """Run directory: resolved config, metrics.jsonl, checkpoints, final model, summary.json."""

    seed: int = 0
    """Seed for python, numpy and torch RNGs, data order and initialisation."""
