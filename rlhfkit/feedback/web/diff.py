"""Side-by-side diff of two responses, for pairs that are nearly identical: reading two long
answers that differ in one sentence is slow and error-prone, a diff shows the sentence.

Lines are aligned with :mod:`difflib`; inside a changed line the differing words are marked. The
diff is of the markdown source (what the model wrote), escaped: it is not rendered.
"""

from __future__ import annotations

import difflib
import html
import re
from dataclasses import dataclass

from markupsafe import Markup

# Above this similarity the page suggests the diff (a ratio of matching characters, 0..1).
NEAR_IDENTICAL = 0.8
# difflib is quadratic at worst: longer pairs get no diff. Its "autojunk" (on, the default) ignores
# tokens that make up over 1% of a long sequence (spaces, blank lines), which keeps a 20,000-character
# one-paragraph pair at a tenth of a second instead of ten; the character-level ratio is never used.
_MAX_CHARS = 40_000
_WORDS = re.compile(r"\s+|\w+|[^\w\s]")


@dataclass(frozen=True)
class DiffRow:
    left: Markup
    right: Markup
    kind: str  # "same" | "changed" | "removed" | "added"


@dataclass(frozen=True)
class SideBySide:
    rows: list[DiffRow]
    similarity: float  # 0..1

    @property
    def near_identical(self) -> bool:
        return self.similarity >= NEAR_IDENTICAL


def _marked(tokens: list[str], lo: int, hi: int, tag: str) -> str:
    return f'<{tag}>{html.escape("".join(tokens[lo:hi]))}</{tag}>' if hi > lo else ""


def _words(a: str, b: str) -> tuple[str, str, int]:
    """Two changed lines with their differing words wrapped in <del> (left) and <ins> (right), and
    the number of characters they share."""
    ta, tb = _WORDS.findall(a), _WORDS.findall(b)
    left, right, same = [], [], 0
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, ta, tb).get_opcodes():
        if op == "equal":
            left.append(html.escape("".join(ta[i1:i2])))
            right.append(html.escape("".join(tb[j1:j2])))
            same += len("".join(ta[i1:i2]))
        else:
            left.append(_marked(ta, i1, i2, "del"))
            right.append(_marked(tb, j1, j2, "ins"))
    return "".join(left), "".join(right), same


def side_by_side(a: str, b: str) -> SideBySide | None:
    """The aligned diff of ``a`` (left) and ``b`` (right); None for texts too long to diff quickly."""
    if len(a) + len(b) > _MAX_CHARS:
        return None
    la, lb = a.splitlines(), b.splitlines()
    rows: list[DiffRow] = []
    same = 0  # characters in common, for the similarity
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, la, lb).get_opcodes():
        if op == "equal":
            rows += [DiffRow(Markup(html.escape(x)), Markup(html.escape(x)), "same") for x in la[i1:i2]]
            same += sum(len(x) for x in la[i1:i2])
            continue
        left, right = la[i1:i2], lb[j1:j2]
        for k in range(max(len(left), len(right))):
            x = left[k] if k < len(left) else None
            y = right[k] if k < len(right) else None
            if x is not None and y is not None:
                hx, hy, common = _words(x, y)
                same += common
                rows.append(DiffRow(Markup(hx), Markup(hy), "changed"))
            elif x is not None:
                rows.append(DiffRow(Markup(f"<del>{html.escape(x)}</del>"), Markup(""), "removed"))
            else:
                rows.append(DiffRow(Markup(""), Markup(f"<ins>{html.escape(y)}</ins>"), "added"))
    # Like difflib's ratio (2 * matches / total) over the aligned lines: the character-level ratio
    # itself is quadratic in the text length.
    total = sum(map(len, la)) + sum(map(len, lb))
    return SideBySide(rows=rows, similarity=2 * same / total if total else 1.0)
