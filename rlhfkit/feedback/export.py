"""`rlhf label export`: judgements -> a preference dataset that `rlhf reward` and `rlhf dpo` read as is.

Rows follow TRL's columns: ``prompt``, ``chosen``, ``rejected`` (or, with ``rankings="ranking"``,
``prompt``, ``responses``, ``ranks`` with 1 = best and equal ranks tied; a fully tied one, e.g. a
tied pair, is no ranking and is left out whatever ``ties`` says), plus ``margin`` (from the
annotator's strength, on Llama 2's scale; 0.0, the plain Bradley-Terry term, without a strength:
see :func:`_one_margin_column`), ``tie`` (with ``ties="keep"``,
read by ``rlhfkit.data.formats`` and modelled by ``rlhf reward ties=rao_kupper|davidson``), and
provenance: ``task_id``, the response and model ids, ``annotator_ids``/``annotators``,
``agreement`` and ``n_annotators``. A per-judgement row also carries its ``annotator_id``,
``annotator`` and ``rationale`` (None when none was written); a majority row carries ``rationales``,
one per entry of ``annotator_ids``.

Conversational tasks (a prompt that is a chat history) export in TRL's conversational preference
format: ``prompt`` is the list of messages, ``chosen``/``rejected`` the assistant's next turn as a
one-message list; ``rlhf reward`` and ``rlhf dpo`` render them with the tokenizer's chat template.
A project mixing both exports every row that way (see :func:`_one_prompt_form`).

``exclude_below``: annotators whose accuracy on the project's gold questions
(:func:`rlhfkit.feedback.quality.gold_accuracy`) is under it are dropped before anything is
aggregated; the summary counts them (``annotators_excluded_below_gold``) and their judgements, and
names them in the log. Annotators who judged no gold question are kept and counted
(``annotators_without_gold``). A project without gold questions cannot be filtered this way: an
error, not a silent export of everything.

``judges``: AI judges (annotators with role ``judge``) are kept (``all``), dropped (``none``), or
kept only when calibrated against people (``calibrated``: Cohen's kappa with the human majority at
least the human-human kappa minus ``judge_margin``, on at least ``judge_min_tasks`` shared tasks;
:mod:`rlhfkit.feedback.calibration`). The summary gets ``judges_kept``, ``judges_dropped``,
``judgements_excluded_judge_gate`` and ``judge_gate``: per judge, kept or not and why.

``agreement`` is the share of a task's annotators whose label equals the most common one (1.0 with
a single annotator, 0.5 for a 1-1 split); for a K-way task it is the mean of that share over the
task's response pairs, each annotator's label for a pair read off their ranking. It is written on
per-judgement rows too, so ``min_agreement`` filters both modes the same way.

Aggregation ``majority`` writes one row per task (per response pair for K-way tasks in ``pairs``
mode) with the majority label (:func:`rlhfkit.feedback.agreement.majority_vote`); a split vote has
no majority and gives no row, because training on a coin flip teaches nothing. Its ``margin`` is
the mean margin of the annotators in the majority.

Aggregation ``dawid_skene`` weighs every label by its annotator's (person, simulated labeler or judge)
estimated reliability: a Dawid-Skene latent-class model (:mod:`rlhfkit.feedback.aggregate`; classes
"A better" / "B better", each annotator a confusion matrix) is fitted by EM to every judgement left
after the gold and judge filters (calibration tasks included, exported or not), one item per task
(per response pair for K-way tasks; ``rankings="pairs"`` only). Each item gives one row oriented by
the posterior's argmax, with ``label_confidence`` = P(chosen is better | all labels) in [0.5, 1]: a
soft label that `rlhf reward` (Bradley-Terry with soft targets) and `rlhf dpo` (cDPO with a per-row
flip probability 1 - c) train on; TRL ignores the column and reads the row as a hard label. Ties are
an observed answer, not a class: they move the posterior only as far as an annotator's tie rate
differs between the classes; an item whose labels are all ties has no decisive evidence and is dropped
(``ties="drop"``, counted in ``ties_dropped``) or written as a tie row with ``label_confidence`` 0.5
(``ties="keep"``); an exact 0.5 posterior gives no row (``undecided``). ``margin`` is the mean margin
of the annotators who agree with the row. The summary's ``dawid_skene_annotators`` (also logged) lists
each annotator's estimated accuracy, label count and tie rate.
"""

from __future__ import annotations

import logging
from collections import Counter
from itertools import combinations
from pathlib import Path

from rlhfkit.config import LabelExportConfig
from rlhfkit.errors import DataError
from rlhfkit.feedback.agreement import majority_vote

log = logging.getLogger(__name__)

_TIE_LABELS = ("tie_good", "tie_bad", "tie")


def export(cfg: LabelExportConfig) -> Path:
    """Run `rlhf label export`; returns the written file or directory."""
    from rlhfkit.feedback.store import FeedbackStore

    with FeedbackStore(cfg.store) as store:
        rows, stats = export_rows(store, cfg.project, aggregate=cfg.aggregate, ties=cfg.ties,
                                  min_agreement=cfg.min_agreement, rankings=cfg.rankings, margins=cfg.margins,
                                  include_calibration=cfg.include_calibration,
                                  exclude_below=cfg.exclude_below, judges=cfg.judges,
                                  judge_margin=cfg.judge_margin, judge_min_tasks=cfg.judge_min_tasks)
    if not rows:
        raise DataError(f"nothing to export ({_describe(stats)})", source=f"project '{cfg.project}'")
    out = Path(cfg.output).expanduser()
    if out.suffix in (".jsonl", ".ndjson"):
        from rlhfkit.data.loading import write_jsonl

        write_jsonl(out, rows)
    else:
        from datasets import Dataset

        Dataset.from_list(rows).save_to_disk(str(out))
    log.info("exported %d rows to %s (%s)", len(rows), out, _describe(stats))
    for a in stats.get("dawid_skene_annotators", []):
        log.info("Dawid-Skene: annotator %s estimated accuracy %.3f on %d labels (ties %.1f%%)",
                 a["annotator"], a["accuracy"], a["labels"], 100 * a["tie_rate"])
    return out


def _describe(stats: Counter) -> str:
    # judge_gate holds one decision per judge (a list): logged judge by judge, not in this line
    return ", ".join(f"{k}: {v}" for k, v in sorted(stats.items())
                     if not isinstance(v, list)) or "no judgements"


def export_rows(store, project: str, *, aggregate: str = "judgement", ties: str = "drop",
                min_agreement: float = 0.0, rankings: str = "pairs",
                margins: list[float] = (0.0, 0.3333, 0.6667, 1.0),
                include_calibration: bool = True,
                exclude_below: float | None = None, judges: str = "all", judge_margin: float = 0.1,
                judge_min_tasks: int = 20) -> tuple[list[dict], Counter]:
    """The export rows of a project and a counter of what was written and why rows were left out."""
    if aggregate not in ("judgement", "majority", "dawid_skene"):
        raise ValueError(f"aggregate must be 'judgement', 'majority' or 'dawid_skene', got {aggregate!r}")
    if aggregate == "dawid_skene" and rankings != "pairs":
        raise ValueError("aggregate=dawid_skene writes pairs with a soft label (label_confidence); "
                         "use rankings=pairs")
    if ties not in ("drop", "keep") or rankings not in ("pairs", "ranking"):
        raise ValueError(f"ties must be drop|keep and rankings pairs|ranking, got {ties!r}, {rankings!r}")
    stats: Counter = Counter()
    js = store.judgements(project)
    if exclude_below is not None:
        js = _drop_below_gold(js, exclude_below, project, stats)
    if judges != "all":  # after the gold filter: the human majority is then made of the people kept
        from rlhfkit.feedback.calibration import gate_judgements

        js = gate_judgements(store, js, judges, margin=judge_margin, min_tasks=judge_min_tasks, stats=stats)
    by_task: dict[int, list[dict]] = {}
    for j in js:
        by_task.setdefault(j["task_id"], []).append(j)
    posterior = _fit_dawid_skene(by_task, stats) if aggregate == "dawid_skene" else None
    rows: list[dict] = []
    for js in by_task.values():
        if js[0]["calibration"] and not include_calibration:
            stats["calibration_excluded"] += len(js)
            continue
        labels = [_pair_labels(j) for j in js]  # per judgement: {(i, j) positions: label}
        agreement = _agreement(labels)
        if agreement < min_agreement:
            stats["below_min_agreement"] += 1
            continue
        if posterior is not None:
            rows.extend(_dawid_skene_rows(js, labels, agreement, posterior, ties=ties, margins=margins,
                                          stats=stats))
            continue
        make = _judgement_rows if aggregate == "judgement" else _majority_rows
        rows.extend(make(js, labels, agreement, ties=ties, rankings=rankings, margins=margins, stats=stats))
    _one_margin_column(rows, stats)
    _one_prompt_form(rows, stats)
    stats["rows"] = len(rows)
    return rows, stats


def _drop_below_gold(js: list[dict], threshold: float, project: str, stats: Counter) -> list[dict]:
    """``js`` without the judgements of annotators under ``threshold`` on gold questions."""
    from rlhfkit.feedback.quality import below_threshold, gold_accuracy

    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"exclude_below must be between 0 and 1, got {threshold!r}")
    if not any(j.get("gold_answer") for j in js):
        raise DataError("exclude_below needs gold questions (an admin marks tasks with a known answer on the "
                        "project's admin page); this project has no judged one",
                        source=f"project '{project}'", field="exclude_below")
    low = below_threshold(js, threshold)
    scored = gold_accuracy(js)
    stats["annotators_excluded_below_gold"] = len(low)
    stats["annotators_without_gold"] = len({j["annotator_id"] for j in js} - set(scored))
    kept = [j for j in js if j["annotator_id"] not in low]
    stats["judgements_excluded_below_gold"] = len(js) - len(kept)
    for row in low.values():
        log.info("excluded annotator %s: gold accuracy %.3f on %d question(s) < %s", row["annotator"],
                 row["accuracy"], row["n"], threshold)
    return kept


def _one_margin_column(rows: list[dict], stats: Counter) -> None:
    """``margin`` is a column of numbers on every row: TRL's RewardTrainer uses the column whenever
    it exists and fails on a null, and a JSONL file with the key on some rows only reads back
    (``datasets``) with nulls on the others. A row without a strength (left blank, a K-way ranking
    exported as pairs, a tie) gets 0.0: in the margin loss that is the plain Bradley-Terry term,
    i.e. no claim about strength -- the same as strength 1 ("negligibly better")."""
    if not any("margin" in r for r in rows):
        return
    for r in rows:
        if r.get("margin") is None:
            r["margin"] = 0.0
            if not r.get("tie"):
                stats["margin_0_without_strength"] += 1


def _one_prompt_form(rows: list[dict], stats: Counter) -> None:
    """Conversational rows and string rows do not mix in one file (a datasets/Arrow column has one
    type, and TRL decides per dataset whether it is conversational): when any task is a
    conversation, string prompts become a one-message user turn and their responses assistant turns."""
    if not any(isinstance(r["prompt"], list) for r in rows):
        return
    for r in rows:
        if isinstance(r["prompt"], str):
            r["prompt"] = [{"role": "user", "content": r["prompt"]}]
            r["chosen"], r["rejected"] = _reply(r["chosen"], True), _reply(r["rejected"], True)
            stats["string_prompts_as_chat"] += 1
    stats["conversational_rows"] = len(rows)


# ---------------------------------------------------------------------------------------------
# labels


def _pair_labels(j: dict) -> dict[tuple[int, int], str]:
    """One judgement as labels on canonical position pairs (i < j): "A" (i better), "B", or a tie."""
    ids = j["response_ids"]
    if j["kind"] == "pair":
        return {(0, 1): j["choice"]}
    rank = {rid: g for g, group in enumerate(j["ranking"]) for rid in group}
    out = {}
    for a, b in combinations(range(len(ids)), 2):
        ra, rb = rank[ids[a]], rank[ids[b]]
        out[(a, b)] = "A" if ra < rb else "B" if ra > rb else "tie"
    return out


def _share(labels: list[str]) -> float:
    return Counter(labels).most_common(1)[0][1] / len(labels)


def _agreement(labels: list[dict]) -> float:
    pairs = labels[0].keys()
    return sum(_share([lab[p] for lab in labels]) for p in pairs) / len(pairs)


def _margin(strength: int | None, margins) -> float | None:
    return None if strength is None else float(margins[strength - 1])


def _base(js: list[dict], agreement: float) -> dict:
    j = js[0]
    return {"task_id": j["task_id"], "annotator_ids": [x["annotator_id"] for x in js],
            "annotators": [x["annotator"] for x in js], "agreement": agreement, "n_annotators": len(js),
            "calibration": j["calibration"], "rationales": [x["rationale"] for x in js]}


def _is_chat(j: dict) -> bool:
    return j.get("messages") is not None


def _reply(text: str, chat: bool) -> str | list[dict]:
    """A response as exported: TRL's conversational preference format makes it the assistant turn."""
    return [{"role": "assistant", "content": text}] if chat else text


def _pair_row(j: dict, a: int, b: int, label: str, margin: float | None) -> dict | None:
    """prompt/chosen/rejected for positions a, b; None when both texts are the same. A conversational
    task gives TRL's conversational preference row: the prompt conversation, and chosen/rejected
    as one-message assistant turns (what ``rlhfkit.data.formats`` renders with the chat template)."""
    texts, ids, models = j["texts"], j["response_ids"], j["model_ids"]
    if texts[a] == texts[b]:
        return None
    c, r = (b, a) if label == "B" else (a, b)
    tie = label in _TIE_LABELS
    chat = _is_chat(j)
    return {"prompt": [dict(m) for m in j["messages"]] if chat else j["prompt"],
            "chosen": _reply(texts[c], chat), "rejected": _reply(texts[r], chat),
            "margin": None if tie else margin, "tie": tie, "tie_kind": label if tie else None,
            "chosen_id": ids[c], "rejected_id": ids[r],
            "chosen_model": models[c], "rejected_model": models[r]}


def _ranking_row(j: dict, ranks: list[int]) -> dict:
    if _is_chat(j):
        raise DataError("its tasks are conversations, and the ranking format (prompt, responses, ranks) "
                        "has no conversational form; export them with rankings=pairs",
                        source=f"task {j['task_id']}")
    return {"prompt": j["prompt"], "responses": list(j["texts"]), "ranks": ranks,
            "response_ids": list(j["response_ids"]), "model_ids": list(j["model_ids"])}


def _dense(values: list[float]) -> list[int]:
    """Dense ranks, 1 = smallest value; equal values share a rank."""
    order = sorted(set(values))
    return [order.index(v) + 1 for v in values]


def _ranks_from_labels(labels: dict[tuple[int, int], str], k: int) -> list[int] | None:
    """Ranks from pair labels: wins counted, more wins = better rank (Copeland); exact for a pair."""
    score = [0.0] * k
    for (a, b), lab in labels.items():
        if lab is None:
            return None
        if lab == "A":
            score[a] += 1
        elif lab == "B":
            score[b] += 1
    return _dense([-s for s in score])


def _judgement_rows(js, labels, agreement, *, ties, rankings, margins, stats) -> list[dict]:
    out = []
    base = _base(js, agreement)
    for j, lab in zip(js, labels):
        extra = {**base, "judgement_id": j["judgement_id"], "annotator": j["annotator"],
                 "annotator_id": j["annotator_id"], "strength": j["strength"], "rationale": j["rationale"]}
        is_tie = any(v in _TIE_LABELS for v in lab.values())
        if rankings == "ranking":
            ranks = _ranks_from_labels(lab, len(j["texts"]))
            if len(set(ranks)) == 1 or len(set(j["texts"])) != len(j["texts"]):
                # a full tie is no preference in a ranking row (formats.py refuses it)
                stats["ties_dropped" if is_tie else "identical_texts"] += 1
                continue
            out.append({**_ranking_row(j, ranks), **extra})
            continue
        for (a, b), label in lab.items():
            if label in _TIE_LABELS and ties == "drop":
                stats["ties_dropped"] += 1
                continue
            row = _pair_row(j, a, b, label, _margin(j["strength"], margins) if j["kind"] == "pair" else None)
            if row is None:
                stats["identical_texts"] += 1
                continue
            out.append({**row, **extra})
    return out


def _majority_rows(js, labels, agreement, *, ties, rankings, margins, stats) -> list[dict]:
    j0 = js[0]
    base = _base(js, agreement)
    consensus: dict[tuple[int, int], str | None] = {}
    for pair in labels[0]:
        consensus[pair] = majority_vote([(0, n, lab[pair]) for n, lab in enumerate(labels)])[0]
    if rankings == "ranking":
        ranks = _ranks_from_labels(consensus, len(j0["texts"]))
        if ranks is None:
            stats["no_majority"] += 1
            return []
        if len(set(ranks)) == 1 or len(set(j0["texts"])) != len(j0["texts"]):
            stats["ties_dropped"] += 1
            return []
        return [{**_ranking_row(j0, ranks), **base}]
    out = []
    for (a, b), label in consensus.items():
        if label is None:
            stats["no_majority"] += 1
            continue
        if label in _TIE_LABELS and ties == "drop":
            stats["ties_dropped"] += 1
            continue
        voters = [j for j, lab in zip(js, labels) if lab[(a, b)] == label]
        ms = [_margin(j["strength"], margins) for j in voters
              if j["kind"] == "pair" and j["strength"] is not None]
        row = _pair_row(j0, a, b, label, sum(ms) / len(ms) if ms else None)
        if row is None:
            stats["identical_texts"] += 1
            continue
        share = _share([lab[(a, b)] for lab in labels])
        out.append({**row, **base, "agreement": share if j0["kind"] != "pair" else agreement})
    return out


def _fit_dawid_skene(by_task: dict[int, list[dict]], stats: Counter) -> dict:
    """{(task id, position pair): P(position i better)} from Dawid-Skene over every judgement; the
    annotators' estimated reliabilities go to ``stats["dawid_skene_annotators"]`` (a list)."""
    from rlhfkit.feedback.aggregate import fit_pair_labels

    items: dict = {}
    names: dict = {}
    for task_id, js in by_task.items():
        for j in js:
            names[j["annotator_id"]] = j["annotator"]
            for pair, label in _pair_labels(j).items():
                items.setdefault((task_id, pair), {})[j["annotator_id"]] = label
    if not items:
        return {}
    posterior, table = fit_pair_labels(items, names)
    stats["dawid_skene_annotators"] = table
    return posterior


def _dawid_skene_rows(js, labels, agreement, posterior, *, ties, margins, stats) -> list[dict]:
    """One row per response pair of a task, oriented by the Dawid-Skene posterior's argmax, with
    ``label_confidence`` (see the module docstring)."""
    j0 = js[0]
    base = _base(js, agreement)
    out = []
    for (a, b) in labels[0]:
        votes = [lab[(a, b)] for lab in labels]
        p_a = posterior[(j0["task_id"], (a, b))]
        if all(v in _TIE_LABELS for v in votes):  # no decisive label: no evidence either way
            if ties == "drop":
                stats["ties_dropped"] += 1
                continue
            label, confidence = Counter(votes).most_common(1)[0][0], 0.5
        elif p_a == 0.5:
            stats["undecided"] += 1
            continue
        else:
            label, confidence = ("A", p_a) if p_a > 0.5 else ("B", 1.0 - p_a)
        ms = [_margin(j["strength"], margins) for j, v in zip(js, votes)
              if v == label and j["kind"] == "pair" and j["strength"] is not None]
        row = _pair_row(j0, a, b, label, sum(ms) / len(ms) if ms else None)
        if row is None:
            stats["identical_texts"] += 1
            continue
        share = _share(votes)
        out.append({**row, **base, "agreement": share if j0["kind"] != "pair" else agreement,
                    "label_confidence": confidence})
    return out
