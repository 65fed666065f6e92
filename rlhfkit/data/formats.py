"""Recognising TRL's dataset formats and normalising them to the few row shapes trainers use.

People bring data in many shapes (a ``text`` column, prompt/completion pairs, chat
``messages``, Anthropic-HH ``chosen``/``rejected`` strings with the prompt baked in, rankings of
several responses). Trainers should not care: :func:`normalize` turns every accepted shape into
one schema per *kind* of data, checks each row, and reports bad rows by file, 1-based row and
field, so a user can fix their data instead of reading a traceback from deep inside a trainer.

Normalised schemas (all text is plain ``str``; conversations are rendered to text with the
tokenizer's chat template, passed as ``render_chat``):

``"sft"``        ``{"prompt": str, "completion": str}`` (loss on the completion only)
``"preference"`` ``{"prompt": str, "chosen": str, "rejected": str}`` plus ``"margin": float``
                 when the source has a non-null ``margin`` column (how much better chosen is,
                 e.g. for Llama-2's margin loss) and ``"tie": bool`` when it has a ``tie``
                 column (the two responses were judged equal). Other columns are dropped.
``"ranking"``    ``{"prompt": str, "responses": list[str], "ranks": list[int]}``, lower rank is
                 better (1 = best), equal ranks are ties; ``ranks`` is always explicit.
``"prompt"``     ``{"prompt": str}``

Input formats (TRL column conventions; see :func:`detect_format`):

- ``text``: for SFT, ``{"prompt": "", "completion": text}``: loss on the whole text.
- ``prompt_completion``: strings, or (conversational) ``prompt`` a list of messages and
  ``completion`` a list of messages ending with the assistant's.
- ``messages``: a conversation; the last message must be the assistant's and is the
  completion, everything before it the prompt (only the final reply carries loss).
- ``preference``: ``prompt``/``chosen``/``rejected``, strings or (conversational) a prompt
  conversation with chosen/rejected lists of assistant messages.
- ``implicit_preference``: only ``chosen``/``rejected``, whose shared prefix is the prompt.
  For strings the cut is at the end of the last ``"\\n\\nAssistant:"`` in the shared prefix
  (Anthropic HH), else at the start of the last whitespace run in it, so responses begin with
  their leading space as in HH (``" hello"``), which is how BPE tokenizers see a new word. For
  conversations the shared leading messages are the prompt.
- ``ranking``: ``prompt`` + ``responses`` (+ optional ``ranks``; without it the responses are
  ordered best first).
- ``prompt_only``: ``prompt`` (a string or a conversation).

Which formats each kind accepts:

- ``"sft"``: text, prompt_completion, messages.
- ``"preference"``: preference and implicit_preference only. Ranking rows are refused rather
  than silently expanded: a ranking of K responses would become C(K, 2) correlated pairs, and
  how to weight them (InstructGPT puts all of one ranking's pairs in one batch, each weighted
  1/C(K, 2)) is a training decision. Load them with kind ``"ranking"`` and expand with
  :func:`ranking_to_pairs` where the weighting is handled.
- ``"ranking"``: ranking, and pair formats (a pair becomes ``responses=[chosen, rejected]``,
  ``ranks=[1, 2]``, or ``ranks=[1, 1]`` when its ``tie`` flag is set, so a tie stays a tie; its
  margin, if any, is dropped, as a ranking carries order only).
- ``"prompt"``: every format with a prompt: the prompt column, a conversation minus its final
  assistant reply, or the shared prompt of implicit pairs. Not ``text``: it has no prompt/response
  boundary, so using it whole as a prompt would only hide a wrong ``--data``.

Validation rules: required fields must be present and non-null; text fields must be non-blank
strings (except an SFT prompt, which may be ``""``: that is the same as the ``text`` format);
chosen must differ from rejected; messages need a known role (system/user/assistant/tool) and
string content; optional ``margin`` and ``ranks`` count as absent when null; a ranking row needs
at least two distinct ranks (all equal is refused as "all tied": with no tie flag to say so, a
constant ``ranks`` column is more likely a mistake), while a pair row with ``tie: true`` read as a
ranking is the tie ``[1, 1]`` (the flag states it). The format of a
file is detected once, from the keys of its first rows (the most common detected format among
the first 100, so one bad first row does not decide it); a later row missing a field of that
format is a bad row. With ``skip_invalid`` bad rows are dropped and counted by reason in the
:class:`NormalizeReport`, otherwise the first one raises.
"""

from __future__ import annotations

import collections
import math
import numbers
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Iterable, Literal

from rlhfkit.errors import DataError

Kind = Literal["sft", "preference", "ranking", "prompt"]
RenderChat = Callable[[list[dict], bool], str]
"""``(messages, add_generation_prompt) -> text``, e.g. a tokenizer's chat template."""

ROLES = ("system", "user", "assistant", "tool")
HH_ASSISTANT = "\n\nAssistant:"
FORMATS = ("text", "prompt_completion", "messages", "preference", "implicit_preference", "ranking",
           "prompt_only")
MAX_EXAMPLES = 5  # full error messages kept in a report: enough to see the pattern, not a flood

# Formats each kind accepts, in the order named in error messages.
ACCEPTS: dict[str, tuple[str, ...]] = {
    "sft": ("text", "prompt_completion", "messages"),
    "preference": ("preference", "implicit_preference"),
    "ranking": ("ranking", "preference", "implicit_preference"),
    "prompt": ("prompt_only", "prompt_completion", "messages", "preference", "implicit_preference",
               "ranking"),
}
_COLUMNS = {
    "text": "'text'", "prompt_completion": "'prompt'+'completion'", "messages": "'messages'",
    "preference": "'prompt'+'chosen'+'rejected'", "implicit_preference": "'chosen'+'rejected'",
    "ranking": "'prompt'+'responses'[+'ranks']", "prompt_only": "'prompt'",
}
# The start of the last whitespace run (the lookahead allows only non-space to the end).
_LAST_WS = re.compile(r"\s+(?=\S*\Z)")


@dataclass
class NormalizeReport:
    """What :func:`normalize` kept and dropped from one source (``format``: the detected one)."""

    source: str
    total: int = 0
    kept: int = 0
    skipped: collections.Counter[str] = field(default_factory=collections.Counter)  # reason -> count
    examples: list[str] = field(default_factory=list)  # the first few full error messages
    format: str | None = None

    def summary(self) -> str:
        """One line, e.g.
        ``data.jsonl: kept 98/100 rows, skipped 2 (empty text: 1, chosen == rejected: 1)``."""
        text = f"{self.source}: kept {self.kept}/{self.total} rows"
        n_skipped = sum(self.skipped.values())
        if n_skipped:
            reasons = ", ".join(f"{k}: {v}" for k, v in self.skipped.most_common())
            text += f", skipped {n_skipped} ({reasons})"
        return text


class _RowError(Exception):
    """A bad row: ``category`` is the short reason counted in the report, ``reason`` the
    message shown to the user. Turned into a DataError (with source and row) by normalize."""

    def __init__(self, category: str, reason: str, field: str | None = None):
        super().__init__(reason)
        self.category, self.reason, self.field = category, reason, field


@dataclass
class _Ctx:
    """Per-call state the row handlers need: where we are, and how to render chats."""

    source: str
    render_chat: RenderChat | None
    row: int = 0


def detect_format(columns: Collection[str], *, source: str) -> str:
    """The TRL format named by a row's (or table's) columns; DataError if none matches.

    Checked most specific first, so e.g. ``prompt``+``chosen``+``rejected`` is a preference row
    and not a prompt-only one. Whether values are strings or conversations is decided per value
    by :func:`normalize`, not here.
    """
    fmt = _detect(columns)
    if fmt is None:
        seen = ", ".join(repr(c) for c in sorted(map(str, columns))) or "none"
        expected = "; ".join(_COLUMNS[f] for f in FORMATS)
        raise DataError(f"cannot tell the data format from the columns ({seen}); expected one of: {expected}",
                        source=source)
    return fmt


def _detect(columns: Collection[str]) -> str | None:
    cols = set(columns)
    if {"prompt", "responses"} <= cols:
        return "ranking"
    if {"chosen", "rejected"} <= cols:
        return "preference" if "prompt" in cols else "implicit_preference"
    if {"prompt", "completion"} <= cols:
        return "prompt_completion"
    if "messages" in cols:
        return "messages"
    if "text" in cols:
        return "text"
    if "prompt" in cols:
        return "prompt_only"
    return None


def detect_rows_format(rows: list, *, source: str) -> str:
    """The format of a list of raw rows, decided as :func:`normalize` decides it (so a caller can
    pick the kind to normalise to, e.g. pairs vs rankings); DataError if no row matches one."""
    return _detect_rows(rows, source)


def _detect_rows(rows: list, source: str) -> str:
    """The most common format among the first 100 rows (first seen wins ties)."""
    counts: collections.Counter[str] = collections.Counter()
    first_cols: Collection[str] | None = None
    for row in rows[:100]:
        if not isinstance(row, dict):
            continue
        if first_cols is None:
            first_cols = row.keys()
        fmt = _detect(row.keys())
        if fmt is not None:
            counts[fmt] += 1
    if not counts:
        detect_format(first_cols or (), source=source)  # raises, naming the columns seen
    return counts.most_common(1)[0][0]


def normalize(rows: Iterable[dict], kind: Kind, *, source: str, render_chat: RenderChat | None = None,
              skip_invalid: bool = False) -> tuple[list[dict], NormalizeReport]:
    """Check and convert raw rows to the schema of ``kind`` (see the module doc).

    Returns ``(rows, report)``. A bad row raises :class:`DataError` (source, row, field) unless
    ``skip_invalid``, in which case it is dropped and counted; if no row survives, DataError
    anyway. Conversational rows need ``render_chat``; without it they raise DataError even
    with ``skip_invalid`` (it is a setup problem, not a data one).
    """
    if kind not in _HANDLERS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(_HANDLERS)}")
    row_numbers = getattr(rows, "row_numbers", None)  # JSONL line numbers, from read_records
    rows = rows if isinstance(rows, list) else list(rows)
    if row_numbers is not None and len(row_numbers) != len(rows):
        row_numbers = None
    report = NormalizeReport(source=source, total=len(rows))
    if not rows:
        raise DataError("contains no rows", source=source)
    fmt = _detect_rows(rows, source)
    report.format = fmt
    if fmt not in ACCEPTS[kind]:
        accepted = "; ".join(_COLUMNS[f] for f in ACCEPTS[kind])
        hint = ""
        if kind == "sft" and fmt in ACCEPTS["ranking"]:
            hint = " (use it as kind 'preference' or 'ranking')"
        elif kind == "preference" and fmt == "ranking":
            hint = (" (use kind 'ranking', and expand each ranking with ranking_to_pairs where the "
                    "pairs can be weighted)")
        raise DataError(f"the rows are in '{fmt}' format ({_COLUMNS[fmt]}), which cannot be used as "
                        f"'{kind}' data{hint}; '{kind}' data needs columns {accepted}", source=source)
    handler = _HANDLERS[kind][fmt]
    ctx = _Ctx(source, render_chat)
    out: list[dict] = []
    for i, row in enumerate(rows):
        ctx.row = row_numbers[i] if row_numbers is not None else i + 1
        try:
            if not isinstance(row, dict):
                raise _RowError("not an object", f"expected an object with named fields, got {_type(row)}")
            result = handler(row, ctx)
            if kind == "preference":
                _with_tie(result, row)
        except _RowError as e:
            err = DataError(e.reason, source=source, row=ctx.row, field=e.field)
            if not skip_invalid:
                raise err from None
            report.skipped[e.category] += 1
            if len(report.examples) < MAX_EXAMPLES:
                report.examples.append(str(err))
            continue
        out.append(result)
        report.kept += 1
    if not report.kept:
        reasons = ", ".join(f"{k}: {v}" for k, v in report.skipped.most_common())
        raise DataError(f"all {report.total} rows are invalid ({reasons}); first error: {report.examples[0]}",
                        source=source)
    return out, report


def ranking_to_pairs(row: dict) -> list[dict]:
    """A normalised ranking row -> every untied pair ``{"prompt", "chosen", "rejected"}``.

    Pairs come in response order (for i < j over the responses, the better of the two as
    chosen); tied pairs carry no preference and are left out, so a K-way ranking gives at most
    C(K, 2) pairs, and a tied pair read as a ranking (ranks ``[1, 1]``) gives none. No margin is
    made up from rank differences: ranks are ordinal.

    Weighting is the caller's job. The pairs of one ranking share a prompt and responses, so
    they are strongly correlated; InstructGPT puts all of a ranking's pairs in the same batch
    and weights each by 1/C(K, 2), so every ranking counts once rather than K(K-1)/2 times.
    Without ``ranks`` the responses count as best first.
    """
    try:
        prompt, responses = row["prompt"], row["responses"]
    except KeyError as e:
        raise DataError("ranking row has no such field; expected 'prompt', 'responses' and "
                        "optionally 'ranks'", field=str(e.args[0])) from None
    ranks = row.get("ranks") or list(range(1, len(responses) + 1))
    if len(ranks) != len(responses):
        raise DataError(f"has {len(ranks)} ranks for {len(responses)} responses", field="ranks")
    pairs = []
    for i in range(len(responses)):
        for j in range(i + 1, len(responses)):
            if ranks[i] == ranks[j]:
                continue
            better, worse = (i, j) if ranks[i] < ranks[j] else (j, i)
            pairs.append({"prompt": prompt, "chosen": responses[better], "rejected": responses[worse]})
    return pairs


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
# Field checks. Each raises _RowError with a short category (counted) and a message (shown).


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
        raise _RowError("missing field", f"missing required field (the row has: {have})", name)
    v = row[name]
    if v is None:
        raise _RowError("null value", "is null; a value is required", name)
    return v


def _check_text(v: Any, name: str, *, allow_blank: bool = False, what: str = "") -> str:
    if not isinstance(v, str):
        raise _RowError("wrong type", f"{what}expected a string, got {_type(v)}", name)
    if not allow_blank and not v.strip():
        raise _RowError("empty text", f"{what}is empty or whitespace only", name)
    return v


def _check_messages(v: Any, name: str) -> list[dict]:
    if not isinstance(v, list):
        raise _RowError("wrong type", f"expected a list of messages, got {_type(v)}", name)
    if not v:
        raise _RowError("empty text", "is an empty list of messages", name)
    for i, m in enumerate(v, start=1):
        if not isinstance(m, dict):
            raise _RowError("bad message", f"message {i} is {_type(m)}, expected an object with "
                                           f"'role' and 'content'", name)
        role = m.get("role")
        if role not in ROLES:
            got = "has no 'role'" if role is None else f"has unknown role {role!r}"
            raise _RowError("bad message", f"message {i} {got} (expected one of {', '.join(ROLES)})", name)
        content = m.get("content")
        if not isinstance(content, str):
            if content is None and m.get("tool_calls"):
                continue  # an assistant turn that only calls tools has no text content
            got = "has no 'content'" if content is None else f"has content of type {_type(content)}"
            raise _RowError("bad message", f"message {i} ({role}) {got}; expected a string", name)
    return v


def _check_reply(v: Any, name: str) -> list[dict]:
    """Messages that end with the assistant's reply (a completion, chosen or rejected)."""
    _check_messages(v, name)
    if v[-1]["role"] != "assistant":
        raise _RowError("last message not from assistant",
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
        raise _RowError("bad margin", f"expected a finite number, got {v!r}", "margin") from None
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
        raise _RowError("bad tie", f"expected true/false, got {v!r}", "tie")


def _distinct(chosen: Any, rejected: Any) -> None:
    if chosen == rejected:
        raise _RowError("chosen == rejected", "chosen and rejected are identical, so there is no preference",
                        "rejected")


# ---------------------------------------------------------------------------------------------
# Chat rendering.


def _render(ctx: _Ctx, msgs: list[dict], gen: bool, name: str) -> str:
    if ctx.render_chat is None:
        # A setup problem, not a bad row: raised even with skip_invalid.
        raise DataError("the row is conversational (a list of messages) and rendering it needs a tokenizer "
                        "with a chat template, but none was given (the tokenizer has no chat_template)",
                        source=ctx.source, row=ctx.row, field=name)
    try:
        return ctx.render_chat(msgs, gen)
    except Exception as e:  # jinja raises e.g. "Conversation roles must alternate" for odd chats
        raise _RowError("chat template error", f"the chat template failed: {type(e).__name__}: {e}",
                        name) from None


def _render_reply(ctx: _Ctx, prompt: list[dict], prompt_text: str, reply: list[dict], name: str) -> str:
    """The text the chat template adds for ``reply`` after ``prompt`` rendered with the generation
    prompt: what the model must produce. Needs the full render to extend the prompt render."""
    full = _render(ctx, prompt + reply, False, name)
    if not full.startswith(prompt_text):
        raise _RowError("chat template mismatch",
                        "the chat template renders the conversation so that it does not start with the "
                        "rendered prompt (with add_generation_prompt=True), so the reply cannot be cut "
                        f"off exactly; prompt ends {prompt_text[-40:]!r}, full text there reads "
                        f"{full[max(len(prompt_text) - 40, 0):len(prompt_text)]!r}", name)
    text = full[len(prompt_text):]
    if not text.strip():
        raise _RowError("empty text", "renders to empty text", name)
    return text


# ---------------------------------------------------------------------------------------------
# Row handlers: (row, ctx) -> normalised row (or a list of rows for ranking -> pairs).


def _prompt_text(row: dict, ctx: _Ctx) -> str:
    """A ``prompt`` field as text: a string, or a conversation rendered for generation."""
    p = _get(row, "prompt")
    if isinstance(p, list):
        return _render(ctx, _check_messages(p, "prompt"), True, "prompt")
    return _check_text(p, "prompt")


def _sft_text(row: dict, ctx: _Ctx) -> dict:
    return {"prompt": "", "completion": _check_text(_get(row, "text"), "text")}


def _sft_prompt_completion(row: dict, ctx: _Ctx) -> dict:
    p, c = _get(row, "prompt"), _get(row, "completion")
    if isinstance(p, str):
        return {"prompt": p, "completion": _check_text(c, "completion")}
    if not isinstance(p, list):
        raise _RowError("wrong type", f"expected a string or a list of messages, got {_type(p)}", "prompt")
    _check_messages(p, "prompt")
    if not isinstance(c, list):
        raise _RowError("wrong type", f"expected a list of messages (the prompt is a conversation), got "
                                      f"{_type(c)}", "completion")
    _check_reply(c, "completion")
    prompt = _render(ctx, p, True, "prompt")
    return {"prompt": prompt, "completion": _render_reply(ctx, p, prompt, c, "completion")}


def _sft_messages(row: dict, ctx: _Ctx) -> dict:
    msgs = _check_reply(_get(row, "messages"), "messages")
    if len(msgs) < 2:
        raise _RowError("bad message", "needs at least one message before the final assistant reply",
                        "messages")
    prompt = _render(ctx, msgs[:-1], True, "messages")
    return {"prompt": prompt, "completion": _render_reply(ctx, msgs[:-1], prompt, msgs[-1:], "messages")}


def _with_margin(out: dict, row: dict) -> dict:
    m = _margin(row)
    if m is not None:
        out["margin"] = m
    return out


def _pref_explicit(row: dict, ctx: _Ctx) -> dict:
    p, c, r = _get(row, "prompt"), _get(row, "chosen"), _get(row, "rejected")
    if isinstance(p, str):
        _check_text(p, "prompt")
        _check_text(c, "chosen")
        _check_text(r, "rejected")
        _distinct(c, r)
        return _with_margin({"prompt": p, "chosen": c, "rejected": r}, row)
    if not isinstance(p, list):
        raise _RowError("wrong type", f"expected a string or a list of messages, got {_type(p)}", "prompt")
    _check_messages(p, "prompt")
    for name, v in (("chosen", c), ("rejected", r)):
        if not isinstance(v, list):
            raise _RowError("wrong type", f"expected a list of messages (the prompt is a conversation), "
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


def _pref_implicit(row: dict, ctx: _Ctx) -> dict:
    c, r = _get(row, "chosen"), _get(row, "rejected")
    if isinstance(c, str):
        _check_text(c, "chosen")
        _check_text(r, "rejected")
        _distinct(c, r)
        split = split_shared_prompt(c, r)
        if split is None:
            raise _RowError("no shared prompt",
                            "chosen and rejected share no prompt prefix, so the prompt cannot be extracted "
                            "(expected e.g. '\\n\\nHuman: ...\\n\\nAssistant:' before both responses); "
                            "add a 'prompt' column", "chosen")
        prompt, c_resp, r_resp = split
        _check_text(c_resp, "chosen", what="once the shared prompt is removed, it ")
        _check_text(r_resp, "rejected", what="once the shared prompt is removed, it ")
        return _with_margin({"prompt": prompt, "chosen": c_resp, "rejected": r_resp}, row)
    if not isinstance(c, list):
        raise _RowError("wrong type", f"expected a string or a list of messages, got {_type(c)}", "chosen")
    _check_messages(c, "chosen")
    if not isinstance(r, list):
        raise _RowError("wrong type", f"expected a list of messages like 'chosen', got {_type(r)}",
                        "rejected")
    _check_messages(r, "rejected")
    _distinct(c, r)
    n = 0
    while n < min(len(c), len(r)) and c[n] == r[n]:
        n += 1
    prompt_msgs, c_reply, r_reply = c[:n], c[n:], r[n:]
    if not prompt_msgs:
        raise _RowError("no shared prompt", "chosen and rejected conversations share no leading messages, "
                                            "so there is no prompt", "chosen")
    for name, reply in (("chosen", c_reply), ("rejected", r_reply)):
        if not reply:
            raise _RowError("empty text", "has no messages after the prompt shared with the other response",
                            name)
        if reply[0]["role"] != "assistant" or reply[-1]["role"] != "assistant":
            bad = reply[0] if reply[0]["role"] != "assistant" else reply[-1]
            raise _RowError("no shared prompt",
                            f"after the {n} messages shared with the other response it must hold the "
                            f"assistant's reply, but has a '{bad['role']}' message there", name)
    margin = _margin(row)
    prompt = _render(ctx, prompt_msgs, True, "chosen")
    out = {"prompt": prompt, "chosen": _render_reply(ctx, prompt_msgs, prompt, c_reply, "chosen"),
           "rejected": _render_reply(ctx, prompt_msgs, prompt, r_reply, "rejected")}
    if margin is not None:
        out["margin"] = margin
    return out


def _ranking(row: dict, ctx: _Ctx) -> dict:
    prompt = _check_text(_get(row, "prompt"), "prompt")
    responses = _get(row, "responses")
    if not isinstance(responses, (list, tuple)):
        raise _RowError("wrong type", f"expected a list of strings, got {_type(responses)}", "responses")
    if len(responses) < 2:
        raise _RowError("too few responses", f"needs at least 2 responses to rank, got {len(responses)}",
                        "responses")
    for i, text in enumerate(responses, start=1):
        _check_text(text, "responses", what=f"response {i}: ")
    if len(set(responses)) != len(responses):
        raise _RowError("duplicate responses", "the same response appears more than once", "responses")
    ranks = row.get("ranks")
    if ranks is None:  # absent or null: the responses are listed best first
        ranks = list(range(1, len(responses) + 1))
    else:
        if not isinstance(ranks, (list, tuple)):
            raise _RowError("wrong type", f"expected a list of integers, got {_type(ranks)}", "ranks")
        if len(ranks) != len(responses):
            raise _RowError("ranks length mismatch", f"has {len(ranks)} ranks for {len(responses)} responses",
                            "ranks")
        for x in ranks:
            if isinstance(x, bool) or not isinstance(x, numbers.Integral):
                raise _RowError("ranks not integers", f"ranks must be integers (1 = best), got {_type(x)}",
                                "ranks")
        ranks = [int(x) for x in ranks]
        if len(set(ranks)) == 1:
            raise _RowError("all tied", "all responses have the same rank, so there is no preference",
                            "ranks")
    return {"prompt": prompt, "responses": list(responses), "ranks": ranks}


def _pair_as_ranking(pair_handler: Callable[[dict, _Ctx], dict]) -> Callable[[dict, _Ctx], dict]:
    """A pair row as a 2-way ranking: ranks [1, 2], or [1, 1] when its ``tie`` flag is set.

    Equal ranks are the ranking schema's tie, so a tied pair stays a tie here (it used to become
    [1, 2], a win for whichever response sat in "chosen"). Unlike a ranking row whose ranks are
    all equal (refused by :func:`_ranking` as "all tied"), a fully tied pair is accepted: its
    explicit ``tie`` flag says the labeler judged both equal, which the reward stage drops or fits
    just as it does on the pair path.
    """
    def handle(row: dict, ctx: _Ctx) -> dict:
        pair = pair_handler(row, ctx)
        _with_tie(pair, row)  # the same flag parsing and checks as for kind "preference"
        ranks = [1, 1] if pair.get("tie") else [1, 2]
        return {"prompt": pair["prompt"], "responses": [pair["chosen"], pair["rejected"]], "ranks": ranks}
    return handle


def _prompt_only(row: dict, ctx: _Ctx) -> dict:
    return {"prompt": _prompt_text(row, ctx)}


def _prompt_of_messages(row: dict, ctx: _Ctx) -> dict:
    msgs = _check_messages(_get(row, "messages"), "messages")
    if msgs[-1]["role"] == "assistant":  # the reply is what the policy will generate
        msgs = msgs[:-1]
    if not msgs:
        raise _RowError("bad message", "has no messages before the assistant reply to use as a prompt",
                        "messages")
    return {"prompt": _render(ctx, msgs, True, "messages")}


def _prompt_of_implicit(row: dict, ctx: _Ctx) -> dict:
    return {"prompt": _pref_implicit(row, ctx)["prompt"]}


_HANDLERS: dict[str, dict[str, Callable[[dict, _Ctx], Any]]] = {
    "sft": {"text": _sft_text, "prompt_completion": _sft_prompt_completion, "messages": _sft_messages},
    "preference": {"preference": _pref_explicit, "implicit_preference": _pref_implicit},
    "ranking": {"ranking": _ranking, "preference": _pair_as_ranking(_pref_explicit),
                "implicit_preference": _pair_as_ranking(_pref_implicit)},
    "prompt": {"prompt_only": _prompt_only, "prompt_completion": _prompt_only, "preference": _prompt_only,
               "ranking": _prompt_only, "messages": _prompt_of_messages,
               "implicit_preference": _prompt_of_implicit},
}
