"""What the store hands out: frozen snapshots, never live ORM rows, so callers can keep them after
the transaction that read them has ended."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProjectInfo:
    id: int
    name: str
    guidelines: str
    guideline_version: int
    annotators_per_task: int
    members_only: bool = False  # only its members (and admins) may label it


@dataclass(frozen=True)
class AnnotatorInfo:
    id: int
    name: str
    role: str  # "admin" | "annotator" | "judge" (an AI labeler: never logs in)
    active: bool = True  # False: deactivated, cannot log in
    must_change_password: bool = False  # invited or reset: must choose a password before anything else
    spec: dict | None = None  # a judge's spec (kind, model, prompt, answer hash); None for people


@dataclass(frozen=True)
class TaskView:
    id: int
    project: str
    prompt: str
    responses: list[tuple[int, str]]  # (response_id, text) in the order SHOWN to this annotator
    calibration: bool
    guideline_version: int
    kind: str  # "pair" | "ranking"
    # What annotators are shown instead of the response ids (sequential ids would leak import order,
    # hence model identity): one random handle per response of this task, aligned with ``responses``.
    handles: tuple[str, ...] = ()
    # A conversational prompt's chat history ({"role", "content"} dicts); None for a string prompt.
    messages: tuple[dict, ...] | None = None
    # Set when this view reopens the annotator's own judgement for revision: its id and the answer
    # relative to the order shown: {"choice", "strength", "rationale", "ranks": {handle: rank}}.
    revision_of: int | None = None
    answer: dict | None = None
