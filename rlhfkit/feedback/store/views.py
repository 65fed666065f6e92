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


@dataclass(frozen=True)
class AnnotatorInfo:
    id: int
    name: str
    role: str  # "admin" | "annotator"


@dataclass(frozen=True)
class TaskView:
    id: int
    project: str
    prompt: str
    responses: list[tuple[int, str]]  # (response_id, text) in the order SHOWN to this annotator
    calibration: bool
    guideline_version: int
    kind: str  # "pair" | "ranking"
