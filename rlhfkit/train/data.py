"""Reading a stage's train/eval rows: one function so every stage splits and reports alike."""

from __future__ import annotations

import logging
import random

from rlhfkit.data.formats import normalize
from rlhfkit.data.loading import read_records

log = logging.getLogger(__name__)


def load_rows(source: str, kind: str, *, split: str = "train", render_chat=None,
              skip_invalid: bool = False) -> tuple[list[dict], dict]:
    """Read and normalise one source; returns (rows, report dict for summary.json)."""
    rows, report = normalize(read_records(source, split=split), kind, source=str(source),
                             render_chat=render_chat, skip_invalid=skip_invalid)
    if report.skipped:
        log.warning(report.summary())
    return rows, {"source": str(source), "total": report.total, "kept": report.kept,
                  "skipped": dict(report.skipped)}


def load_split(cfg, kind: str, *, render_chat=None) -> tuple[list[dict], list[dict], dict]:
    """Train rows, held-out rows and a report. Without ``eval_data``, a seeded ``eval_fraction``
    of the training rows is held out (the same rows for a given seed, on every process)."""
    train, report = load_rows(cfg.data, kind, split=cfg.data_split, render_chat=render_chat,
                              skip_invalid=cfg.skip_invalid)
    if cfg.eval_data:
        held, eval_report = load_rows(cfg.eval_data, kind, split=cfg.data_split, render_chat=render_chat,
                                      skip_invalid=cfg.skip_invalid)
        return train, held, {"train": report, "eval": eval_report}
    n_eval = int(round(len(train) * cfg.eval_fraction))
    if n_eval == 0:
        return train, [], {"train": report}
    order = list(range(len(train)))
    random.Random(cfg.seed).shuffle(order)
    held_idx = set(order[:n_eval])
    held = [r for i, r in enumerate(train) if i in held_idx]
    kept = [r for i, r in enumerate(train) if i not in held_idx]
    return kept, held, {"train": report, "held_out": n_eval}
