"""Row-level checks and conversions behind :func:`rlhfkit.data.formats.normalize`.

One handler per (kind, input format) turns a raw row into the kind's schema (see the
:mod:`rlhfkit.data.formats` docstring), raising :class:`RowError` with a short category (counted
in the report) and a message naming the field. A new input format is a new handler here plus a
line in ``HANDLERS`` and in the format tables of ``formats.py``.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from typing import Any, Callable

from rlhfkit.errors import DataError

RenderChat = Callable[[list[dict], bool], str]
"""``(messages, add_generation_prompt) -> text``, e.g. a tokenizer's chat template."""

ROLES = ("system", "user", "assistant", "tool")
HH_ASSISTANT = "\n\nAssistant:"
# The start of the last whitespace run (the lookahead allows only non-space to the end).
_LAST_WS = re.compile(r"\s+(?=\S*\Z)")


class RowError(Exception):
    """A bad row: ``category`` is the short reason counted in the report, ``reason`` the
    message shown to the user. Turned into a DataError (with source and row) by normalize."""

    def __init__(self, category: str, reason: str, field: str | None = None):
        super().__init__(reason)
        self.category, self.reason, self.field = category, reason, field


@dataclass
class RowContext:
    """Per-call state the row handlers need: where we are, and how to render chats."""

    source: str
    render_chat: RenderChat | None
    row: int = 0



def split_shared_prompt(chosen: str, rejected: str) -> tuple[str, str, str] | None:
    """``(prompt, chosen_response, rejected_response)`` from two texts that embed the same
    prompt, or None when they share no usable (non-blank) prompt. See the module doc for where
    the cut falls."""
    common = chosen[: _common_prefix_len(chosen, rejected)]
    k = common.rfind(HH_ASSISTANT)
    if k >= 0:
        cut = k + len(HH_ASSISTANT)
    else:
        m = _LAST_WS.search(common)
        if m is None:
            return None
        cut = m.start()
    prompt = common[:cut]
    if not prompt.strip():
        return None
    return prompt, chosen[cut:], rejected[cut:]


def _common_prefix_len(a: str, b: str) -> int:
    # Binary search on slice equality: the comparisons run in C, so this is O(n log n) in C
    # rather than a per-character Python loop (HH rows are a few KB and there are 100k+ of them).
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # invariant: a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


# ---------------------------------------------------------------------------------------------
# Field checks. Each raises RowError with a short category (counted) and a message (shown).


def _type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, numbers.Number):
        return f"a number ({v!r})"
    names = {str: "a string", list: "a list", tuple: "a list", dict: "an object"}
    return names.get(type(v), type(v).__name__)


def _get(row: dict, name: str) -> Any:
    if name not in row:
        have = ", ".join(map(str, row)) or "none"
        raise RowError("missing field", f"missing required field (the row has: {have})", name)
    v = row[name]
    if v is None:
        raise RowError("null value", "is null; a value is required", name)
    return v


def _check_text(v: Any, name: str, *, allow_blank: bool = False, what: str = "") -> str:
    if not isinstance(v, str):
        raise RowError("wrong type", f"{what}expected a string, got {_type(v)}", name)
    if not allow_blank and not v.strip():
        raise RowError("empty text", f"{what}is empty or whitespace only", name)
    return v


def _check_messages(v: Any, name: str) -> list[dict]:
    if not isinstance(v, list):
        raise RowError("wrong type", f"expected a list of messages, got {_type(v)}", name)
    if not v:
        raise RowError("empty text", "is an empty list of messages", name)
    for i, m in enumerate(v, start=1):
        if not isinstance(m, dict):
            raise RowError("bad message", f"message {i} is {_type(m)}, expected an object with "
                                          f"'role' and 'content'", name)
        role = m.get("role")
        if role not in ROLES:
            got = "has no 'role'" if role is None else f"has unknown role {role!r}"
            raise RowError("bad message", f"message {i} {got} (expected one of {', '.join(ROLES)})", name)
        content = m.get("content")
        if not isinstance(content, str):
            if content is None and m.get("tool_calls"):
                continue  # an assistant turn that only calls tools has no text content
            got = "has no 'content'" if content is None else f"has content of type {_type(content)}"
            raise RowError("bad message", f"message {i} ({role}) {got}; expected a string", name)
    return v


def _check_reply(v: Any, name: str) -> list[dict]:
    """Messages that end with the assistant's reply (a completion, chosen or rejected)."""
    _check_messages(v, name)
    if v[-1]["role"] != "assistant":
        raise RowError("last message not from assistant",
                       f"the last message must be from the assistant (it is the reply to learn), "
                       f"but it is from '{v[-1]['role']}'", name)
    return v


def _margin(row: dict) -> float | None:
    v = row.get("margin")
    if v is None:
        return None
    try:
        if isinstance(v, bool) or not isinstance(v, (numbers.Real, str)):
            raise ValueError
        f = float(v)  # a numeric string is accepted: CSV cells are always strings
        if not math.isfinite(f):
            raise ValueError
    except ValueError:
        raise RowError("bad margin", f"expected a finite number, got {v!r}", "margin") from None
    return f


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no", "")


def _with_tie(out: dict, row: dict) -> None:
    """Carry an optional ``tie`` flag (a labeler judged both responses equally good or bad).

    Ties are kept as such so the reward stage can drop them or model them (Rao-Kupper /
    Davidson) instead of silently reading "chosen" as a win. Booleans, 0/1 and CSV strings
    ("true"/"false") are accepted; null means no tie.
    """
    v = row.get("tie")
    if v is None:
        return
    if isinstance(v, bool):
        out["tie"] = v
    elif isinstance(v, numbers.Integral) and v in (0, 1):
        out["tie"] = bool(v)
    elif isinstance(v, str) and v.strip().lower() in _TRUE + _FALSE:
        out["tie"] = v.strip().lower() in _TRUE
    else:
        raise RowError("bad tie", f"expected true/false, got {v!r}", "tie")


LABEL_CONFIDENCE = "label_confidence"
"""Soft-label column: P(chosen is really better), in [0, 1] (``rlhf label export aggregate=dawid_skene``
writes the posterior, in [0.5, 1]); `rlhf reward` and `rlhf dpo` train on it as a soft target."""


def _with_confidence(out: dict, row: dict) -> None:
    """Carry an optional ``label_confidence`` (null = absent): a finite number in [0, 1]."""
    v = row.get(LABEL_CONFIDENCE)
    if v is None:
        return
    try:
        if isinstance(v, bool) or not isinstance(v, (numbers.Real, str)):
            raise ValueError
        f = float(v)  # CSV cells are strings
        if not 0.0 <= f <= 1.0:  # also refuses nan
            raise ValueError
    except ValueError:
        raise RowError("bad label_confidence", f"expected a probability in [0, 1], got {v!r}",
                       LABEL_CONFIDENCE) from None
    out[LABEL_CONFIDENCE] = f


def _distinct(chosen: Any, rejected: Any) -> None:
    if chosen == rejected:
        raise RowError("chosen == rejected", "chosen and rejected are identical, so there is no preference",
                       "rejected")


# ---------------------------------------------------------------------------------------------
# Chat rendering.


def _render(ctx: RowContext, msgs: list[dict], gen: bool, name: str) -> str:
    if ctx.render_chat is None:
        # A setup problem, not a bad row: raised even with skip_invalid.
        raise DataError("the row is conversational (a list of messages) and rendering it needs a tokenizer "
                        "with a chat template, but none was given (the tokenizer has no chat_template)",
                        source=ctx.source, row=ctx.row, field=name)
    try:
        return ctx.render_chat(msgs, gen)
    except Exception as e:  # jinja raises e.g. "Conversation roles must alternate" for odd chats
        raise RowError("chat template error", f"the chat template failed: {type(e).__name__}: {e}",
                       name) from None


def _render_reply(ctx: RowContext, prompt: list[dict], prompt_text: str, reply: list[dict], name: str) -> str:
    """The text the chat template adds for ``reply`` after ``prompt`` rendered with the generation
    prompt: what the model must produce. Needs the full render to extend the prompt render."""
    full = _render(ctx, prompt + reply, False, name)
    if not full.startswith(prompt_text):
        raise RowError("chat template mismatch",
                       "the chat template renders the conversation so that it does not start with the "
                       "rendered prompt (with add_generation_prompt=True), so the reply cannot be cut "
                       f"off exactly; prompt ends {prompt_text[-40:]!r}, full text there reads "
                       f"{full[max(len(prompt_text) - 40, 0):len(prompt_text)]!r}", name)
    text = full[len(prompt_text):]
    if not text.strip():
        raise RowError("empty text", "renders to empty text", name)
    return text


# ---------------------------------------------------------------------------------------------
# Row handlers: (row, ctx) -> normalised row (or a list of rows for ranking -> pairs).


def _prompt_text(row: dict, ctx: RowContext) -> str:
    """A ``prompt`` field as text: a string, or a conversation rendered for generation."""
    p = _get(row, "prompt")
    if isinstance(p, list):
        return _render(ctx, _check_messages(p, "prompt"), True, "prompt")
    return _check_text(p, "prompt")


def _sft_text(row: dict, ctx: RowContext) -> dict:
    return {"prompt": "", "completion": _check_text(_get(row, "text"), "text")}


def _sft_prompt_completion(row: dict, ctx: RowContext) -> dict:
    p, c = _get(row, "prompt"), _get(row, "completion")
    if isinstance(p, str):
        return {"prompt": p, "completion": _check_text(c, "completion")}
    if not isinstance(p, list):
        raise RowError("wrong type", f"expected a string or a list of messages, got {_type(p)}", "prompt")
    _check_messages(p, "prompt")
    if not isinstance(c, list):
        raise RowError("wrong type", f"expected a list of messages (the prompt is a conversation), got "
                                     f"{_type(c)}", "completion")
    _check_reply(c, "completion")
    prompt = _render(ctx, p, True, "prompt")
    return {"prompt": prompt, "completion": _render_reply(ctx, p, prompt, c, "completion")}


def _sft_messages(row: dict, ctx: RowContext) -> dict:
    msgs = _check_reply(_get(row, "messages"), "messages")
    if len(msgs) < 2:
        raise RowError("bad message", "needs at least one message before the final assistant reply",
                       "messages")
    prompt = _render(ctx, msgs[:-1], True, "messages")
    return {"prompt": prompt, "completion": _render_reply(ctx, msgs[:-1], prompt, msgs[-1:], "messages")}


def _with_margin(out: dict, row: dict) -> dict:
    m = _margin(row)
    if m is not None:
        out["margin"] = m
    return out


def _pref_explicit(row: dict, ctx: RowContext) -> dict:
    p, c, r = _get(row, "prompt"), _get(row, "chosen"), _get(row, "rejected")
    if isinstance(p, str):
        _check_text(p, "prompt")
        _check_text(c, "chosen")
        _check_text(r, "rejected")
        _distinct(c, r)
        return _with_margin({"prompt": p, "chosen": c, "rejected": r}, row)
    if not isinstance(p, list):
        raise RowError("wrong type", f"expected a string or a list of messages, got {_type(p)}", "prompt")
    _check_messages(p, "prompt")
    for name, v in (("chosen", c), ("rejected", r)):
        if not isinstance(v, list):
            raise RowError("wrong type", f"expected a list of messages (the prompt is a conversation), "
                                         f"got {_type(v)}", name)
        _check_reply(v, name)
    _distinct(c, r)
    margin = _margin(row)  # checked before the (slower) rendering
    prompt = _render(ctx, p, True, "prompt")
    out = {"prompt": prompt, "chosen": _render_reply(ctx, p, prompt, c, "chosen"),
           "rejected": _render_reply(ctx, p, prompt, r, "rejected")}
    _distinct(out["chosen"], out["rejected"])
    if margin is not None:
        out["margin"] = margin
    return out


def _pref_implicit(row: dict, ctx: RowContext) -> dict:
    c, r = _get(row, "chosen"), _get(row, "rejected")
    if isinstance(c, str):
        _check_text(c, "chosen")
        _check_text(r, "rejected")
        _distinct(c, r)
        split = split_shared_prompt(c, r)
        if split is None:
            raise RowError("no shared prompt",
                           "chosen and rejected share no prompt prefix, so the prompt cannot be extracted "
                           "(expected e.g. '\\n\\nHuman: ...\\n\\nAssistant:' before both responses); "
                           "add a 'prompt' column", "chosen")
        prompt, c_resp, r_resp = split
        _check_text(c_resp, "chosen", what="once the shared prompt is removed, it ")
        _check_text(r_resp, "rejected", what="once the shared prompt is removed, it ")
        return _with_margin({"prompt": prompt, "chosen": c_resp, "rejected": r_resp}, row)
    if not isinstance(c, list):
        raise RowError("wrong type", f"expected a string or a list of messages, got {_type(c)}", "chosen")
    _check_messages(c, "chosen")
    if not isinstance(r, list):
        raise RowError("wrong type", f"expected a list of messages like 'chosen', got {_type(r)}",
                       "rejected")
    _check_messages(r, "rejected")
    _distinct(c, r)
    n = 0
    while n < min(len(c), len(r)) and c[n] == r[n]:
        n += 1
    prompt_msgs, c_reply, r_reply = c[:n], c[n:], r[n:]
    if not prompt_msgs:
        raise RowError("no shared prompt", "chosen and rejected conversations share no leading messages, "
                                           "so there is no prompt", "chosen")
    for name, reply in (("chosen", c_reply), ("rejected", r_reply)):
        if not reply:
            raise RowError("empty text", "has no messages after the prompt shared with the other response",
                           name)
        if reply[0]["role"] != "assistant" or reply[-1]["role"] != "assistant":
            bad = reply[0] if reply[0]["role"] != "assistant" else reply[-1]
            raise RowError("no shared prompt",
                           f"after the {n} messages shared with the other response it must hold the "
                           f"assistant's reply, but has a '{bad['role']}' message there", name)
    margin = _margin(row)
    prompt = _render(ctx, prompt_msgs, True, "chosen")
    out = {"prompt": prompt, "chosen": _render_reply(ctx, prompt_msgs, prompt, c_reply, "chosen"),
           "rejected": _render_reply(ctx, prompt_msgs, prompt, r_reply, "rejected")}
    if margin is not None:
        out["margin"] = margin
    return out


def _ranking(row: dict, ctx: RowContext) -> dict:
    prompt = _check_text(_get(row, "prompt"), "prompt")
    responses = _get(row, "responses")
    if not isinstance(responses, (list, tuple)):
        raise RowError("wrong type", f"expected a list of strings, got {_type(responses)}", "responses")
    if len(responses) < 2:
        raise RowError("too few responses", f"needs at least 2 responses to rank, got {len(responses)}",
                       "responses")
    for i, text in enumerate(responses, start=1):
        _check_text(text, "responses", what=f"response {i}: ")
    if len(set(responses)) != len(responses):
        raise RowError("duplicate responses", "the same response appears more than once", "responses")
    ranks = row.get("ranks")
    if ranks is None:  # absent or null: the responses are listed best first
        ranks = list(range(1, len(responses) + 1))
    else:
        if not isinstance(ranks, (list, tuple)):
            raise RowError("wrong type", f"expected a list of integers, got {_type(ranks)}", "ranks")
        if len(ranks) != len(responses):
            raise RowError("ranks length mismatch", f"has {len(ranks)} ranks for {len(responses)} responses",
                           "ranks")
        for x in ranks:
            if isinstance(x, bool) or not isinstance(x, numbers.Integral):
                raise RowError("ranks not integers", f"ranks must be integers (1 = best), got {_type(x)}",
                               "ranks")
        ranks = [int(x) for x in ranks]
        if len(set(ranks)) == 1:
            raise RowError("all tied", "all responses have the same rank, so there is no preference",
                           "ranks")
    return {"prompt": prompt, "responses": list(responses), "ranks": ranks}


def _pair_as_ranking(pair_handler: Callable[[dict, RowContext], dict]) -> Callable[[dict, RowContext], dict]:
    """A pair row as a 2-way ranking: ranks [1, 2], or [1, 1] when its ``tie`` flag is set.

    Equal ranks are the ranking schema's tie, so a tied pair stays a tie here (it used to become
    [1, 2], a win for whichever response sat in "chosen"). Unlike a ranking row whose ranks are
    all equal (refused by :func:`_ranking` as "all tied"), a fully tied pair is accepted: its
    explicit ``tie`` flag says the labeler judged both equal, which the reward stage drops or fits
    just as it does on the pair path.
    """
    def handle(row: dict, ctx: RowContext) -> dict:
        pair = pair_handler(row, ctx)
        _with_tie(pair, row)  # the same flag parsing and checks as for kind "preference"
        ranks = [1, 1] if pair.get("tie") else [1, 2]
        return {"prompt": pair["prompt"], "responses": [pair["chosen"], pair["rejected"]], "ranks": ranks}
    return handle


def _prompt_only(row: dict, ctx: RowContext) -> dict:
    return {"prompt": _prompt_text(row, ctx)}


def _prompt_of_messages(row: dict, ctx: RowContext) -> dict:
    msgs = _check_messages(_get(row, "messages"), "messages")
    if msgs[-1]["role"] == "assistant":  # the reply is what the policy will generate
        msgs = msgs[:-1]
    if not msgs:
        raise RowError("bad message", "has no messages before the assistant reply to use as a prompt",
                       "messages")
    return {"prompt": _render(ctx, msgs, True, "messages")}


def _prompt_of_implicit(row: dict, ctx: RowContext) -> dict:
    return {"prompt": _pref_implicit(row, ctx)["prompt"]}


HANDLERS: dict[str, dict[str, Callable[[dict, RowContext], Any]]] = {
    "sft": {"text": _sft_text, "prompt_completion": _sft_prompt_completion, "messages": _sft_messages},
    "preference": {"preference": _pref_explicit, "implicit_preference": _pref_implicit},
    "ranking": {"ranking": _ranking, "preference": _pair_as_ranking(_pref_explicit),
                "implicit_preference": _pair_as_ranking(_pref_implicit)},
    "prompt": {"prompt_only": _prompt_only, "prompt_completion": _prompt_only, "preference": _prompt_only,
               "ranking": _prompt_only, "messages": _prompt_of_messages,
               "implicit_preference": _prompt_of_implicit},
}
