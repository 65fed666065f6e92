"""Validating a submission and converting it to the stored, canonical fields (design note 1 of
:mod:`rlhfkit.feedback.store`): the annotator answers relative to the order they were shown, the
database stores the winner by response id. Pure functions, no database."""

from __future__ import annotations

from typing import Any

from .errors import StoreError


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: an error names what it got without echoing a
    whole (possibly huge) input back to the client."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"

CHOICES = ("A", "B", "tie_good", "tie_bad")
# The longest rationale kept, whatever the path (JSON API, labelling form, simulation, Python): the
# API refused longer ones while the form stored 900,000 characters.
MAX_RATIONALE = 20_000
TIES = ("tie_good", "tie_bad")


def _canonical(kind: str, ids: list[int], *, choice, strength, ranking, rationale, shown,
               seconds) -> dict[str, Any]:
    """Validate a submission against its task and convert it to the stored (canonical) fields."""
    if not isinstance(shown, (list, tuple)) or sorted(_ints(shown, "displayed_order")) != sorted(ids):
        raise StoreError(f"must list exactly the task's response ids {sorted(ids)} in the order shown, "
                         f"got {_short(shown)}", field="displayed_order")
    shown = list(shown)
    if strength is not None and (isinstance(strength, bool) or not isinstance(strength, int)
                                 or not 1 <= strength <= 4):
        raise StoreError(f"must be an integer from 1 to 4, got {_short(strength)}", field="strength")
    if rationale is not None and not isinstance(rationale, str):
        raise StoreError(f"must be text, got {type(rationale).__name__}", field="rationale")
    if rationale is not None and len(rationale) > MAX_RATIONALE:
        raise StoreError(f"is {len(rationale)} characters long; at most {MAX_RATIONALE}", field="rationale")
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                or not seconds >= 0 or seconds == float("inf")):
        raise StoreError(f"must be a finite number >= 0, got {_short(seconds)}", field="seconds")
    out: dict[str, Any] = {"strength": strength, "rationale": rationale or None, "displayed_order": shown,
                           "seconds": None if seconds is None else float(seconds)}
    if kind == "pair":
        if ranking is not None:
            raise StoreError("a pair task takes a choice, not a ranking", field="ranking")
        if choice not in CHOICES:
            raise StoreError(f"must be one of {', '.join(CHOICES)} (relative to the order shown), "
                             f"got {_short(choice)}", field="choice")
        if choice in TIES:
            out.update(choice=choice, tie=choice, winner_response_id=None, position_chosen=None,
                       ranking=[list(ids)])
        else:
            pos = 0 if choice == "A" else 1
            winner = shown[pos]
            loser = shown[1 - pos]
            out.update(choice="A" if winner == ids[0] else "B", tie=None, winner_response_id=winner,
                       position_chosen=pos, ranking=[[winner], [loser]])
        return out
    if choice is not None:
        raise StoreError("a ranking task takes a ranking, not a choice", field="choice")
    if not isinstance(ranking, (list, tuple)) or not ranking:
        raise StoreError("a ranking task needs a ranking: groups of response ids, best first",
                         field="ranking")
    groups = []
    for g in ranking:
        if not isinstance(g, (list, tuple)) or not g:
            raise StoreError(f"each group must be a non-empty list of response ids, got {_short(g)}",
                             field="ranking")
        groups.append(_ints(g, "ranking"))
    flat = [i for g in groups for i in g]
    if sorted(flat) != sorted(ids):
        raise StoreError(f"must rank each of the task's responses {sorted(ids)} exactly once, "
                         f"got {_short(ranking)}", field="ranking")
    if len(groups) == 1:
        raise StoreError("a ranking with everything tied says nothing; use at least two groups",
                         field="ranking")
    winner = groups[0][0] if len(groups[0]) == 1 else None
    out.update(choice=None, tie=None, winner_response_id=winner, ranking=groups,
               position_chosen=shown.index(winner) if winner is not None else None)
    return out


def _ints(values, field: str) -> list[int]:
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise StoreError(f"must contain response ids (integers), got {_short(list(values))}", field=field)
    return list(values)

