"""Reading a stage's train/eval rows: one function so every stage splits and reports alike."""

from __future__ import annotations

import logging
import random

from rlhfkit.data.formats import detect_rows_format, normalize, ranking_to_pairs
from rlhfkit.data.loading import read_records

log = logging.getLogger(__name__)


def load_rows(source: str, kind: str, *, split: str = "train", render_chat=None,
              skip_invalid: bool = False) -> tuple[list[dict], dict]:
    """Read and normalise one source; returns (rows, report dict for summary.json).

    Kind ``"pairs"`` (the DPO family's input) takes either pair data, normalised as kind
    ``"preference"``, or ranking data, normalised as kind ``"ranking"``, decided per source;
    :func:`expand_pairs` then turns both into plain pairs.
    """
    records = read_records(source, split=split)
    if kind == "pairs":
        kind = "ranking" if detect_rows_format(records, source=str(source)) == "ranking" else "preference"
    rows, report = normalize(records, kind, source=str(source), render_chat=render_chat,
                             skip_invalid=skip_invalid)
    if report.skipped:
        log.warning(report.summary())
    return rows, {"source": str(source), "total": report.total, "kept": report.kept,
                  "skipped": dict(report.skipped)}


def expand_pairs(rows: list[dict]) -> tuple[list[dict], dict]:
    """Rows of kind ``"pairs"`` (see :func:`load_rows`) -> plain ``{"prompt", "chosen",
    "rejected"}`` pairs and a report of what changed.

    A ranking of K responses becomes its untied pairs (at most C(K, 2), ``ranking_to_pairs``),
    each an independent pair. A pair flagged as a tie is dropped: it says neither response is
    better, and a pairwise preference loss would read it as a win for whichever came first.
    """
    out: list[dict] = []
    ties = from_rankings = 0
    for row in rows:
        if "responses" in row:
            pairs = ranking_to_pairs(row)
            from_rankings += len(pairs)
            out.extend(pairs)
        elif row.get("tie"):
            ties += 1
        else:
            out.append(row)
    if ties:
        log.info("dropped %d tie pairs (no preference to learn)", ties)
    return out, {"ties_dropped": ties, "pairs_from_rankings": from_rankings}


def load_split(cfg, kind: str, *, render_chat=None) -> tuple[list[dict], list[dict], dict]:
    """Train rows, held-out rows and a report. Without ``eval_data``, a seeded ``eval_fraction``
    of the training rows is held out (the same rows for a given seed, on every process).

    With kind ``"pairs"`` the rows are split first and then expanded with :func:`expand_pairs`,
    so the pairs of one ranking are never on both sides of the split.
    """
    train, held, report = _load_split(cfg, kind, render_chat=render_chat)
    if kind == "pairs":
        train, report["train_pairs"] = expand_pairs(train)
        held, report["eval_pairs"] = expand_pairs(held)
    return train, held, report


def _load_split(cfg, kind: str, *, render_chat=None) -> tuple[list[dict], list[dict], dict]:
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
