"""Judges that score: a reward-model directory and a Python function (pointwise or pairwise).

A pointwise judge gives each response a score s; the runner turns two scores into the Bradley-Terry
preference P(A) = sigmoid(s_A - s_B) and ranks K responses by score. A pairwise function answers
P(first better) directly, so it is the kind that can show a position bias, and is asked in both
orders like the language-model judges.
"""

from __future__ import annotations

import importlib
import math
import numbers
from collections.abc import Callable

from rlhfkit.feedback.judges.base import Answer, JudgeError, Query


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def import_function(spec: str, key: str = "judge.function") -> Callable:
    module, name = spec.split(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise JudgeError(f"{key} '{spec}': cannot import module '{module}' ({e}); it must be importable "
                         "(installed, or its directory on PYTHONPATH)") from None
    except Exception as e:  # an error inside the module itself
        raise JudgeError(f"{key} '{spec}': importing '{module}' raised {type(e).__name__}: {e}") from e
    fn = getattr(mod, name, None)
    if not callable(fn):
        raise JudgeError(f"{key} '{spec}': '{name}' is not a function of module '{module}'")
    return fn


def _numbers(out, n: int, spec: str, *, probabilities: bool) -> list[float]:
    """The function's output checked: n finite numbers (in [0, 1] for probabilities)."""
    try:
        values = list(out)
    except TypeError:
        raise JudgeError(f"judge.function '{spec}' returned {type(out).__name__}, not a list of "
                         f"{n} numbers") from None
    if len(values) != n:
        raise JudgeError(f"judge.function '{spec}' returned {len(values)} values for {n} rows")
    for v in values:
        bad = isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v))
        if bad or (probabilities and not 0.0 <= float(v) <= 1.0):
            want = "a probability in [0, 1]" if probabilities else "a finite number"
            raise JudgeError(f"judge.function '{spec}' returned {v!r}; each value must be {want}")
    return [float(v) for v in values]


class FunctionJudge:
    """``mode: pointwise``: ``fn(prompts=..., completions=...) -> scores``; ``mode: pairwise``:
    ``fn(prompts=..., completions_a=..., completions_b=...) -> P(A better)`` per row. Called with
    keywords, in batches of ``batch_size``."""

    def __init__(self, spec):
        self.spec = spec
        self.pointwise = spec.mode == "pointwise"
        self.fn = import_function(spec.function)

    def _call(self, **kw):
        try:
            return self.fn(**kw)
        except JudgeError:
            raise
        except Exception as e:  # the user's code: say whose, keep the traceback for --verbose users
            raise JudgeError(f"judge.function '{self.spec.function}' raised {type(e).__name__}: {e}") from e

    def ask(self, queries: list[Query], answer: Answer) -> None:
        for batch in _batches(queries, self.spec.batch_size):
            prompts = [q.prompt for q in batch]
            if self.pointwise:
                out = self._call(prompts=prompts, completions=[q.texts[0] for q in batch])
            else:
                out = self._call(prompts=prompts, completions_a=[q.texts[0] for q in batch],
                                 completions_b=[q.texts[1] for q in batch])
            for q, v in zip(batch, _numbers(out, len(batch), self.spec.function,
                                            probabilities=not self.pointwise)):
                answer(q, v, {})


class RewardModelJudge:
    """A reward-model directory (ensembles too), scored with its stored offset / scale; pointwise."""

    pointwise = True

    def __init__(self, spec):
        from rlhfkit.scoring import RewardScorer

        self.spec = spec
        try:
            self.scorer = RewardScorer(spec.path, max_length=spec.max_length, device=spec.device)
        except (OSError, ValueError, KeyError) as e:
            raise JudgeError(f"judge.path '{spec.path}': cannot load the reward model ({type(e).__name__}: "
                             f"{e}); give a directory written by `rlhf reward`") from None

    def ask(self, queries: list[Query], answer: Answer) -> None:
        for batch in _batches(queries, self.spec.batch_size):
            scores, _ = self.scorer.score([q.prompt for q in batch], [q.texts[0] for q in batch],
                                          batch_size=self.spec.batch_size)
            for q, s in zip(batch, scores.tolist()):
                answer(q, float(s), {})
