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
                 column (the two responses were judged equal), and ``"label_confidence": float``
                 (a soft label in [0, 1], P(chosen is really better)) when it has a non-null
                 ``label_confidence`` column. Other columns are dropped.
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
from dataclasses import dataclass, field
from typing import Collection, Iterable, Literal

from rlhfkit.data.rows import (HANDLERS, HH_ASSISTANT, LABEL_CONFIDENCE, ROLES, RenderChat, RowContext,
                               RowError, _type, _with_confidence, _with_tie, split_shared_prompt)
from rlhfkit.errors import DataError

Kind = Literal["sft", "preference", "ranking", "prompt"]
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
    if kind not in HANDLERS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(HANDLERS)}")
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
    handler = HANDLERS[kind][fmt]
    ctx = RowContext(source, render_chat)
    out: list[dict] = []
    for i, row in enumerate(rows):
        ctx.row = row_numbers[i] if row_numbers is not None else i + 1
        try:
            if not isinstance(row, dict):
                raise RowError("not an object", f"expected an object with named fields, got {_type(row)}")
            result = handler(row, ctx)
            if kind == "preference":
                _with_tie(result, row)
                _with_confidence(result, row)
        except RowError as e:
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


__all__ = ["FORMATS", "HH_ASSISTANT", "Kind", "LABEL_CONFIDENCE", "NormalizeReport", "ROLES", "RenderChat",
           "detect_format", "detect_rows_format", "normalize", "ranking_to_pairs", "split_shared_prompt"]
