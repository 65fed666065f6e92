"""What every judge kind shares: the questions, the both-order verdict, the spec hash and the journal.

A judge answers :class:`Query` objects. A pairwise query shows two responses in one order and asks
P(the first is better); a pointwise query (reward models, pointwise functions) asks one response's
score. Every task is asked in both orders, (A, B) and (B, A), and :func:`pair_verdict` combines

    p = (p_AB + (1 - p_BA)) / 2

which cancels a constant preference for the first position (a judge that adds +0.2 to whatever is
shown first gets the same p as one that does not). The verdict is *position-consistent* when both
orders name the same winner: sign(p_AB - 1/2) == sign(1/2 - p_BA).

Every answer goes to the :class:`Journal` (a JSONL file, flushed and fsynced) before it is used, keyed
by the query and the spec hash, so a run that is killed and re-run with the same judge asks nothing
twice, whichever kind the judge is (for the API judge this is the paid-for answer).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.errors import RlhfkitError


class JudgeError(RlhfkitError):
    """A judge cannot answer (unreachable server, a label that is not one token, a function's bad
    output); the message names the config key at fault. Printed by the CLI without a traceback."""


@dataclass(frozen=True)
class Query:
    """One question to a judge: ``ids`` are response ids in the order shown (one for a pointwise
    score, two for a pairwise preference), ``texts`` their texts; ``prompt`` the task's prompt
    (a conversation's transcript)."""

    task_id: int
    ids: tuple[int, ...]
    prompt: str
    texts: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.task_id}:" + "-".join(str(i) for i in self.ids)


# A judge calls this once per query, as soon as it has the answer: the value (P(first better) or a
# score), or None with info["error"] when this one query could not be answered.
Answer = Callable[[Query, float | None, dict], None]


def judge_messages(spec, prompt: str, first: str, second: str) -> list[dict]:
    """The chat a prompted judge (local LM or API) is asked: an optional system message, then the
    template filled with the prompt and the two responses in the order asked."""
    messages = [{"role": "system", "content": spec.system}] if spec.system else []
    user = spec.template.format(prompt=prompt, response_a=first, response_b=second)
    return [*messages, {"role": "user", "content": user}]


def spec_hash(spec) -> str:
    """SHA-256 of the judge spec's answer-changing keys (not its transport keys), canonical JSON."""
    data = spec.model_dump(mode="json", exclude=set(spec.transport_keys))
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


@dataclass(frozen=True)
class PairVerdict:
    p_first: float  # combined P(the response shown first is better), both orders averaged
    consistent: bool  # both orders named the same winner (or both said exactly 1/2)


def pair_verdict(p_ab: float, p_ba: float) -> PairVerdict:
    """Combine P(A first is better) and P(B first is better) from the two orders (module docstring)."""
    return PairVerdict(p_first=(p_ab + (1.0 - p_ba)) / 2.0, consistent=_sign(p_ab - 0.5) == _sign(0.5 - p_ba))


def strength_of(p: float, bins) -> int:
    """Store strength 1-4 from the confidence |2p - 1|: 1 + the number of ``bins`` edges it reaches."""
    confidence = round(abs(2.0 * p - 1.0), 12)  # p = 0.4 must reach the edge 0.2 (2p - 1 = -0.19999...)
    return 1 + sum(confidence >= e for e in bins)


class Journal:
    """Answers received, one JSON line each, appended and flushed (fsync) before they are used.

    Lines of other specs (another hash) are ignored, not deleted: the file is the record of what was
    paid for. A torn last line (killed mid-write) is skipped on reading."""

    def __init__(self, path: str | os.PathLike, spec_hash: str):
        self.path = Path(path)
        self.hash = spec_hash
        self.answers: dict[str, tuple[float | None, dict]] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict) and row.get("spec") == spec_hash and "key" in row:
                    self.answers[row["key"]] = (row.get("value"), row.get("info") or {})
        self.reused = len(self.answers)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())

    def __contains__(self, key: str) -> bool:
        return key in self.answers

    def add(self, q: Query, value: float | None, info: dict) -> None:
        row = {"key": q.key, "spec": self.hash, "value": value, "info": info}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.answers[q.key] = (value, info)

    def value(self, key: str) -> float | None:
        return self.answers[key][0]

    def close(self) -> None:
        self._file.close()
