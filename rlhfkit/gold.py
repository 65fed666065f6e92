"""The gold reward: the judge that says whether RLHF worked, separate from the reward it trained on.

`gold:` in `rlhf evaluate`, `rlhf ppo` (monitored, never trained on), `rlhf dpo` (its sampled
evaluation) and the pipeline's `evaluate` section takes one spec, resolved here into one function
``(prompts, completions) -> list[float]``:

1. ``"synthetic"``: the synthetic world's gold reward (:func:`rlhfkit.synthetic.gold.gold_reward_fn`).
2. ``"module:function"``: the user's function, imported when the stage runs and called with keywords,
   ``fn(prompts=..., completions=...)``, so both ``(prompts, completions)`` and TRL's ``reward_funcs``
   signature ``(prompts, completions, **kwargs)`` work.
3. a reward-model directory written by `rlhf reward`: scored by :class:`rlhfkit.scoring.RewardScorer`
   with its stored offset / scale, a held-out judge (for instance one trained on more or other labels
   than the proxy).

Whatever the source, the returned function checks what it got back: a sequence of one finite number
per completion, else a :class:`~rlhfkit.errors.ConfigError` naming the spec and what was wrong; an
exception raised inside the user's function is re-raised the same way, naming the spec and where it
was raised. Importing this module does not import torch (the reward-model case loads it lazily).
"""

from __future__ import annotations

import importlib
import inspect
import math
import numbers
import os
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from rlhfkit.config.base import GOLD_FORMS, REWARD_FN
from rlhfkit.errors import ConfigError, RlhfkitError

GoldFn = Callable[[list[str], list[str]], list[float]]

SYNTHETIC = "synthetic"
SIGNATURE = "(prompts, completions) -> list[float] (TRL's (prompts, completions, **kwargs) works too)"


def gold_kind(spec: str) -> str:
    """'synthetic', 'function' or 'reward_model' (the config checked the spec has one of these forms)."""
    if spec == SYNTHETIC:
        return "synthetic"
    if REWARD_FN.match(spec) and not os.path.isdir(os.path.expanduser(spec)):
        return "function"
    return "reward_model"


def describe_gold(spec: str | None) -> str | None:
    """What a report calls the gold: 'synthetic world gold', 'my_pkg.judge:score', 'reward model /path
    (held-out judge)'; None for no gold."""
    if spec is None:
        return None
    kind = gold_kind(spec)
    if kind == "synthetic":
        return "synthetic world gold"
    if kind == "function":
        return spec
    return f"reward model {spec} (held-out judge)"


def resolve_gold(spec: str | None, *, device: Any = "cpu", max_length: int = 512,
                 batch_size: int = 32) -> GoldFn | None:
    """The gold function of ``spec`` (None: no gold). ``device``, ``max_length`` and ``batch_size``
    are for a reward-model directory: where it runs, the prompt + completion tokens it reads, and
    the rows per forward pass."""
    if spec is None:
        return None
    kind = gold_kind(spec)
    if kind == "synthetic":
        from rlhfkit.synthetic.gold import gold_reward_fn

        return _checked(spec, gold_reward_fn)
    if kind == "function":
        return _checked(spec, _import(spec))
    return _checked(spec, _reward_model(spec, device=device, max_length=max_length, batch_size=batch_size))


def _import(spec: str) -> Callable:
    module, name = spec.split(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise ConfigError(f"gold '{spec}': cannot import module '{module}' ({e}); it must be importable "
                          "(installed, or its directory on PYTHONPATH)") from None
    except Exception as e:  # an error inside the module itself (SyntaxError, a failing import, ...)
        raise ConfigError(f"gold '{spec}': importing module '{module}' raised {type(e).__name__}: {e}"
                          f"{_where(e)}") from e
    fn = getattr(mod, name, None)
    if fn is None:
        raise ConfigError(f"gold '{spec}': module '{module}' has no attribute '{name}'")
    if not callable(fn):
        raise ConfigError(f"gold '{spec}': '{name}' is not callable (it is {_show(fn)}); a gold function "
                          f"has signature {SIGNATURE}")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or extension without a signature: try it when called
        return fn
    try:
        sig.bind(prompts=[], completions=[])
    except TypeError:
        raise ConfigError(f"gold '{spec}': '{name}{sig}' cannot be called as {name}(prompts=..., "
                          f"completions=...); a gold function has signature {SIGNATURE}") from None
    return fn


def _reward_model(spec: str, *, device: Any, max_length: int, batch_size: int) -> Callable:
    from rlhfkit.scoring import RewardScorer

    path = os.path.expanduser(spec)
    if not os.path.isdir(path):
        raise ConfigError(f"gold must be {GOLD_FORMS}; '{spec}' is none of them (no such directory)")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ConfigError(f"gold '{spec}': cannot load the reward model: no config.json in '{path}' (give a "
                          "directory written by `rlhf reward`)")
    try:
        scorer = RewardScorer(path, max_length=max_length, device=device)
    except RlhfkitError as e:
        raise ConfigError(f"gold '{spec}': cannot load the reward model: {e}") from None
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"gold '{spec}': cannot load the reward model ({type(e).__name__}: {e}); "
                          "give a directory written by `rlhf reward`") from None

    def score(prompts: list[str], completions: list[str]) -> list[float]:
        return scorer.score(prompts, completions, batch_size=batch_size)[0].tolist()

    return score


def _where(e: BaseException) -> str:
    """' (at file.py:12 in fn)': the innermost frame of an exception, since the CLI prints no traceback."""
    frames = traceback.extract_tb(e.__traceback__)
    if not frames:
        return ""
    f = frames[-1]
    return f" (at {f.filename}:{f.lineno} in {f.name})"


def _checked(spec: str, fn: Callable) -> GoldFn:
    """``fn`` called with keywords, its exceptions and its results checked (module docstring)."""

    def gold(prompts: list[str], completions: list[str]) -> list[float]:
        prompts, completions = list(prompts), list(completions)
        if len(prompts) != len(completions):
            raise ValueError(f"gold '{spec}': got {len(prompts)} prompts for {len(completions)} completions")
        try:
            out = fn(prompts=prompts, completions=completions)
        except RlhfkitError:
            raise
        except Exception as e:
            raise ConfigError(f"gold '{spec}' raised {type(e).__name__}: {e}{_where(e)}") from e
        return check_scores(spec, out, len(completions))

    return gold


def check_scores(spec: str, out: Any, n: int) -> list[float]:
    """``out`` as ``n`` finite floats, or a ConfigError naming ``spec`` and what is wrong."""
    if hasattr(out, "tolist") and not isinstance(out, (list, tuple)):  # numpy arrays, torch tensors
        out = out.tolist()
    if isinstance(out, (str, bytes)) or not isinstance(out, Sequence):
        raise ConfigError(f"gold '{spec}' returned {_show(out)}, not a list of {n} floats; a gold function "
                          f"has signature {SIGNATURE}")
    if len(out) != n:
        raise ConfigError(f"gold '{spec}' returned {len(out)} scores for {n} completions (one score per "
                          "completion, in order)")
    scores = []
    for i, v in enumerate(out):
        if not isinstance(v, numbers.Real):
            raise ConfigError(f"gold '{spec}' returned a non-number at index {i}: {_show(v)}")
        v = float(v)
        if not math.isfinite(v):
            raise ConfigError(f"gold '{spec}' returned {v} at index {i}; gold scores must be finite")
        scores.append(v)
    return scores


def _show(v: Any) -> str:
    text = repr(v)
    return f"{text[:60]}{'...' if len(text) > 60 else ''} ({type(v).__name__})"
