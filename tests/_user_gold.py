"""A user's gold functions for tests/test_user_gold.py, imported by spec as `_user_gold:<name>` (tests/
is on sys.path under pytest). ``CALLS`` records what each recording function was given, so a test
can recompute the expected scores from the very texts a stage scored."""

from __future__ import annotations

import numpy as np

CALLS: list[tuple[list[str], list[str]]] = []


def words(prompts, completions):
    """Plain signature: a tenth of the number of words of each completion (recorded)."""
    CALLS.append((list(prompts), list(completions)))
    return [len(c.split()) / 10 for c in completions]


def word_scores(completions: list[str]) -> list[float]:
    """What `words` returns, for the expected values."""
    return [len(c.split()) / 10 for c in completions]


def trl_style(prompts, completions, **kwargs):
    """TRL's reward_funcs signature: extra dataset columns arrive as keyword arguments."""
    assert not kwargs
    return [float(len(c)) + 0.5 * len(p) for p, c in zip(prompts, completions)]


def completions_only(completions, **kwargs):
    """TRL also accepts functions that read only the completions (prompts arrive in kwargs)."""
    return [float(len(c)) for c in completions]


def as_array(prompts, completions):
    return np.arange(len(completions), dtype=np.float32)


def wrong_length(prompts, completions):
    return [0.0] * (len(completions) + 1)


def nan(prompts, completions):
    return [0.0] * (len(completions) - 1) + [float("nan")]


def a_string(prompts, completions):
    return ["good"] * len(completions)


def a_scalar(prompts, completions):
    return 1.0


def raises(prompts, completions):
    raise RuntimeError("the judge is down")


def one_arg(texts):
    return [0.0] * len(texts)


NOT_A_FUNCTION = 3
