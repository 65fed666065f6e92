"""`rlhf label serve` and the annotator web UI, under the name they have always been imported by;
the code lives in :mod:`rlhfkit.feedback.web` (see its docstring for the pages, API and security)."""

from rlhfkit.feedback.web.app import create_app, serve
from rlhfkit.feedback.web.markdown import render_markdown
from rlhfkit.feedback.web.security import LoginThrottle

__all__ = ["LoginThrottle", "create_app", "render_markdown", "serve"]
