"""What a request may carry: the JSON API's bodies (pydantic) and the labeling form's fields.

Both name the offending field, so bad input is a 422 (API) or 400 (form), never a 500."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rlhfkit.feedback.store.canonical import MAX_RATIONALE

CHOICES = ("A", "B", "tie_good", "tie_bad")
MAX_ID = 2 ** 63 - 1  # database integer keys are 64-bit: a larger id is a 422, not a driver overflow
TaskId = Annotated[int, PathParam(ge=1, le=MAX_ID)]
# A response as annotators know it: the opaque per-task handle (store.TaskView.handles), never its id.
HANDLE_PATTERN = r"^[0-9a-f]{16}$"
Handle = Annotated[str, Field(pattern=HANDLE_PATTERN)]


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    password: str = Field(min_length=1, max_length=1000)


class PasswordIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    current: str = Field(min_length=1, max_length=1000)
    new: str = Field(min_length=1, max_length=1000)


class JudgementIn(BaseModel):
    """One judgement as the annotator made it; ``choice`` is relative to the order shown."""

    model_config = ConfigDict(extra="forbid")
    choice: Literal["A", "B", "tie_good", "tie_bad"] | None = None
    """Pairs: "A" = first shown (left), "B" = second (right), "tie_good", "tie_bad"."""
    strength: int | None = Field(None, ge=1, le=4)
    ranking: list[list[Handle]] | None = None
    """K-way tasks: groups of response handles, best first; handles in one group are tied."""
    rationale: str | None = Field(None, max_length=MAX_RATIONALE, pattern=r"^[^\x00]*$")
    displayed_order: list[Handle] = Field(min_length=2)
    """The response handles in the order they were shown."""
    seconds: float | None = Field(None, ge=0, le=7 * 24 * 3600, allow_inf_nan=False)

    @model_validator(mode="after")
    def _one_of(self) -> JudgementIn:
        if (self.choice is None) == (self.ranking is None):
            raise ValueError("give exactly one of 'choice' (pair tasks) or 'ranking' (K-way tasks)")
        return self


# ---------------------------------------------------------------------------------------------
# the labeling form (a browser post, not JSON: parsed by hand into store.submit's arguments)


class FormError(ValueError):
    """A labeling form field is missing or malformed (the message names it)."""


def judgement_from_form(form: Any) -> dict:
    """The labeling form's fields -> keyword arguments of ``store.submit``."""
    order = [x.strip() for x in str(form.get("displayed_order", "")).split(",") if x.strip()]
    if not order or not all(re.match(HANDLE_PATTERN, x) for x in order):
        raise FormError("field 'displayed_order': not a comma-separated list of response handles")
    seconds = None
    if str(form.get("seconds", "")).strip():
        try:
            seconds = float(str(form.get("seconds")))
        except ValueError:
            raise FormError("field 'seconds': not a number") from None
        if not math.isfinite(seconds) or seconds < 0:
            raise FormError("field 'seconds': must be a finite number >= 0")
    strength = None
    if str(form.get("strength", "")).strip():
        try:
            strength = int(str(form.get("strength")))
        except ValueError:
            raise FormError("field 'strength': not an integer 1-4") from None
    # NUL: PostgreSQL refuses it
    rationale = str(form.get("rationale", "")).replace("\x00", "").strip() or None
    out: dict[str, Any] = {"strength": strength, "rationale": rationale, "displayed_order": order,
                           "seconds": seconds}
    rank_fields = {k: v for k, v in form.items() if k.startswith("rank_")}
    if rank_fields:
        # K-way: rank numbers per response handle, equal numbers = tied; groups best (lowest) first
        groups: dict[int, list[str]] = {}
        for k, v in rank_fields.items():
            if not re.match(HANDLE_PATTERN, k[len("rank_"):]):
                raise FormError(f"field '{k[:40]}': not a rank of a response of this task")
            try:
                groups.setdefault(int(str(v)), []).append(k[len("rank_"):])
            except ValueError:
                raise FormError(f"field '{k}': rank must be an integer") from None
        out["ranking"] = [sorted(groups[r]) for r in sorted(groups)]
        return out
    choice = str(form.get("choice", ""))
    if choice not in CHOICES:
        raise FormError("field 'choice': pick A, B, tie (both good) or both bad")
    out["choice"] = choice
    return out


def prefill_from_form(form: Any) -> dict:
    """What the annotator had entered, to put back into the page when the server refuses the post
    (a validation error must not wipe a typed rationale or a ranking)."""
    ranks = {k[len("rank_"):]: str(v)[:3] for k, v in form.items()
             if k.startswith("rank_") and re.match(HANDLE_PATTERN, k[len("rank_"):])}
    return {"choice": str(form.get("choice", ""))[:16], "strength": str(form.get("strength", ""))[:2],
            "rationale": str(form.get("rationale", ""))[:MAX_RATIONALE], "ranks": ranks}
