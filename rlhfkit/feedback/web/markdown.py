"""Markdown of prompts, responses and guidelines -> safe HTML, in two independent layers.

1. ``markdown-it-py`` (CommonMark plus GFM tables and strikethrough) with raw HTML *off*: a
   ``<script>`` in a model's answer is text, not markup. Images are off too: an annotator's page
   must not fetch whatever URL a response names (the CSP would block it anyway, but it would still
   leak that the page was opened).
2. ``nh3`` (the Ammonia sanitizer) over the result with an allow-list of tags, attributes and URL
   schemes: whatever the renderer might let through (a ``javascript:`` link, a stray attribute)
   is removed, so safety does not rest on one library's defaults.

Headings are shifted down two levels because the page already uses h1/h2.
"""

from __future__ import annotations

import nh3
from markdown_it import MarkdownIt
from markupsafe import Markup

_TAGS = {"p", "br", "hr", "h3", "h4", "h5", "h6", "strong", "em", "del", "s", "code", "pre", "blockquote",
         "ul", "ol", "li", "table", "thead", "tbody", "tr", "th", "td", "a"}
# No ``style``: the CSP (style-src 'self') refuses inline styles, and CSS from a response could
# restyle the page's controls; table column alignment is the price.
_ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}, "code": {"class"}}
_URL_SCHEMES = {"http", "https", "mailto"}
_HEADING_SHIFT = 2


def _parser(breaks: bool) -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False, "breaks": breaks})
    md.enable(["table", "strikethrough"])
    md.disable("image")

    def shifted_heading(renderer, tokens, idx, options, env):
        # add_render_rule binds the rule to the renderer, hence the first argument
        token = tokens[idx]
        token.tag = f"h{min(6, int(token.tag[1]) + _HEADING_SHIFT)}"
        return renderer.renderToken(tokens, idx, options, env)

    md.add_render_rule("heading_open", shifted_heading)
    md.add_render_rule("heading_close", shifted_heading)
    return md


_MD = _parser(breaks=False)
# Model output and prompts are often plain text whose single newlines matter (a poem, an address,
# a list without markers): there a newline is a line break, as in chat interfaces.
_MD_BREAKS = _parser(breaks=True)


def sanitize(html: str) -> str:
    """``html`` with everything outside the allow-list removed; links get ``rel`` and open in a new
    tab, so a response cannot navigate the labelling page away."""
    return nh3.clean(html, tags=_TAGS, attributes=_ATTRIBUTES, url_schemes=_URL_SCHEMES,
                     link_rel="noopener noreferrer nofollow",
                     set_tag_attribute_values={"a": {"target": "_blank"}}, strip_comments=True)


def render_markdown(source: str | None, *, breaks: bool = False) -> Markup:
    """Untrusted markdown -> sanitized HTML, marked safe for Jinja2 (which would escape it again).
    ``breaks``: a single newline is a line break (for prompts and responses), not a space."""
    return Markup(sanitize((_MD_BREAKS if breaks else _MD).render(source or "")))
