"""The guidelines' markdown: a small, safe subset, escaped before any markup is applied."""

from __future__ import annotations

import html
import re

from markupsafe import Markup


def _inline(text: str) -> str:
    """Inline markup on already-escaped text: `code`, **bold**, *italic*, [text](http(s)://url)."""
    parts = re.split(r"(`[^`]+`)", text)
    out = []
    for part in parts:
        if len(part) > 1 and part.startswith("`") and part.endswith("`"):
            out.append(f"<code>{part[1:-1]}</code>")
            continue
        part = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", part)
        part = re.sub(r"(?<![*\w])\*(?!\s)(.+?)(?<!\s)\*(?![*\w])", r"<em>\1</em>", part)
        # Only http(s) targets: a javascript: URL would run on click. The text was escaped, so the
        # URL cannot contain a quote that closes the attribute.
        part = re.sub(r"\[([^\]]+)\]\((https?://[^\s)]+)\)",
                      r'<a href="\2" rel="noopener noreferrer nofollow" target="_blank">\1</a>', part)
        out.append(part)
    return "".join(out)


def render_markdown(source: str) -> Markup:
    """Guidelines markdown -> HTML. Everything is escaped first, so raw HTML in the source shows as
    text; then headings (#), bullet (-, *) and numbered lists, paragraphs and inline markup."""
    blocks: list[str] = []
    para: list[str] = []
    items: list[str] = []
    list_tag = ""

    def flush() -> None:
        nonlocal list_tag
        if para:
            blocks.append("<p>" + _inline(" ".join(para)) + "</p>")
            para.clear()
        if items:
            lis = "".join(f"<li>{_inline(i)}</li>" for i in items)
            blocks.append(f"<{list_tag}>{lis}</{list_tag}>")
            items.clear()
            list_tag = ""

    for raw in (source or "").splitlines():
        line = html.escape(raw.rstrip(), quote=True)
        stripped = line.strip()
        heading = re.match(r"^(#{1,4})\s+(.*)$", stripped)
        bullet = re.match(r"^[-*]\s+(.*)$", stripped)
        numbered = re.match(r"^\d+[.)]\s+(.*)$", stripped)
        if not stripped:
            flush()
        elif heading:
            flush()
            level = len(heading.group(1)) + 2  # the page already has h1/h2
            blocks.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif bullet or numbered:
            tag = "ul" if bullet else "ol"
            if para or (items and list_tag != tag):
                flush()
            list_tag = tag
            items.append((bullet or numbered).group(1))
        elif items and raw.startswith((" ", "\t")):
            items[-1] += " " + stripped  # continuation of a list item
        else:
            if items:
                flush()
            para.append(stripped)
    flush()
    return Markup("\n".join(blocks))
