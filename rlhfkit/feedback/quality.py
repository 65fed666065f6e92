"""Label quality from a project's judgements (``store.judgements(project)`` rows): scores on gold
questions, tasks where annotators split, and one annotator's record. Pure functions, no database,
so the admin pages and ``rlhf label export exclude_below=...`` compute the same numbers.

Gold scoring: a pair judgement scores 1 when its canonical choice equals the gold choice (a tie
must be the same kind of tie), else 0. A K-way judgement scores the share of response pairs it
orders as the gold ranking does (better, worse or tied), so a ranking with one swap of neighbours
still earns most of the credit. An annotator's accuracy is the mean over the gold questions they
judged.
"""

from __future__ import annotations

import statistics
from collections import Counter
from itertools import combinations
from string import ascii_uppercase

TIE_NAMES = {"tie_good": "tie (both good)", "tie_bad": "tie (both bad)"}


def _rank_of(ranking: list[list[int]]) -> dict[int, int]:
    return {rid: g for g, group in enumerate(ranking) for rid in group}


def gold_score(j: dict) -> float | None:
    """How well judgement ``j`` matches its task's gold answer (0..1); None for a non-gold task."""
    gold = j.get("gold_answer")
    if not gold:
        return None
    if j["kind"] == "pair":
        return 1.0 if j["choice"] == gold["choice"] else 0.0
    mine, want = _rank_of(j["ranking"]), _rank_of(gold["ranking"])
    pairs = list(combinations(j["response_ids"], 2))
    same = sum((mine[a] > mine[b]) - (mine[a] < mine[b]) == (want[a] > want[b]) - (want[a] < want[b])
               for a, b in pairs)
    return same / len(pairs)


def gold_accuracy(js: list[dict]) -> dict[int, dict]:
    """Per annotator id: ``annotator`` (name), ``n`` gold questions judged, ``correct`` (sum of
    scores) and ``accuracy`` (their mean). Annotators without a gold judgement are absent."""
    out: dict[int, dict] = {}
    for j in js:
        score = gold_score(j)
        if score is None:
            continue
        row = out.setdefault(j["annotator_id"], {"annotator": j["annotator"],
                                                 "annotator_id": j["annotator_id"], "n": 0, "correct": 0.0})
        row["n"] += 1
        row["correct"] += score
    for row in out.values():
        row["accuracy"] = row["correct"] / row["n"]
    return out


def below_threshold(js: list[dict], threshold: float) -> dict[int, dict]:
    """The annotators whose gold accuracy is under ``threshold`` (ids -> their gold_accuracy row)."""
    return {a: row for a, row in gold_accuracy(js).items() if row["accuracy"] < threshold}


# ---------------------------------------------------------------------------------------------
# how a judgement reads to an admin


def letter(position: int) -> str:
    """The canonical position as the admin pages name it: A, B, C, ..."""
    return ascii_uppercase[position] if position < len(ascii_uppercase) else f"#{position + 1}"


def describe(j: dict) -> str:
    """A judgement in canonical letters: "A better", "tie (both good)", "B > A = C"."""
    if j["kind"] == "pair":
        if j["choice"] in TIE_NAMES:
            return TIE_NAMES[j["choice"]]
        return f"{j['choice']} better"
    pos = {rid: i for i, rid in enumerate(j["response_ids"])}
    return " > ".join(" = ".join(letter(pos[r]) for r in sorted(g, key=pos.get)) for g in j["ranking"])


def describe_gold(task: dict) -> str | None:
    gold = task.get("gold_answer")
    if not gold:
        return None
    return describe({"kind": task["kind"], "choice": gold["choice"], "ranking": gold["ranking"],
                     "response_ids": task["response_ids"]})


# ---------------------------------------------------------------------------------------------
# disagreement review


def _share_agreeing(labels: list[str]) -> float:
    return Counter(labels).most_common(1)[0][1] / len(labels)


def disagreements(js: list[dict], limit: int = 200) -> list[dict]:
    """Tasks whose annotators split, most divided first: per task its prompt, responses (canonical,
    with model ids) and every judgement with label, strength, rationale and seconds.

    ``agreement`` is the share of annotators on the most common label, averaged over response pairs
    for K-way tasks (the same number `rlhf label export` writes); a task is split when it is under 1."""
    by_task: dict[int, list[dict]] = {}
    for j in js:
        by_task.setdefault(j["task_id"], []).append(j)
    out = []
    for task_id, group in by_task.items():
        if len(group) < 2:
            continue
        first = group[0]
        per_pair = []
        for a, b in combinations(first["response_ids"], 2):
            labels = []
            for j in group:
                rank = _rank_of(j["ranking"]) if j["ranking"] else {}
                if j["kind"] == "pair" and j["choice"] in TIE_NAMES:
                    labels.append(j["choice"])  # tie kinds differ: both good vs both bad
                else:
                    labels.append(str((rank[a] > rank[b]) - (rank[a] < rank[b])))
            per_pair.append(_share_agreeing(labels))
        agreement = sum(per_pair) / len(per_pair)
        if agreement >= 1.0:
            continue
        out.append({
            "task_id": task_id, "prompt": first["prompt"], "messages": first.get("messages"),
            "kind": first["kind"], "agreement": agreement, "calibration": first["calibration"],
            "gold": describe_gold(first),
            "responses": [{"letter": letter(i), "id": rid, "model": m, "text": t}
                          for i, (rid, m, t) in enumerate(zip(first["response_ids"], first["model_ids"],
                                                              first["texts"]))],
            "judgements": [{"annotator": j["annotator"], "annotator_id": j["annotator_id"],
                            "label": describe(j), "strength": j["strength"], "rationale": j["rationale"],
                            "seconds": j["seconds"]} for j in group],
            "labels": Counter(describe(j) for j in group).most_common(),
        })
    out.sort(key=lambda t: (t["agreement"], t["task_id"]))
    return out[:limit]


# ---------------------------------------------------------------------------------------------
# one annotator


def annotator_record(js: list[dict], annotator_id: int, recent: int = 50) -> dict:
    """One annotator in one project: counts, median seconds, tie rate, gold accuracy, how often they
    side with the majority of the others on shared tasks, and their latest judgements (newest first)
    with rationales."""
    mine = [j for j in js if j["annotator_id"] == annotator_id]
    by_task: dict[int, list[dict]] = {}
    for j in js:
        by_task.setdefault(j["task_id"], []).append(j)
    agree = shared = 0
    for j in mine:
        others = [describe(o) for o in by_task[j["task_id"]] if o["annotator_id"] != annotator_id]
        if others:
            shared += 1
            top, count = Counter(others).most_common(1)[0]
            agree += describe(j) == top and count * 2 > len(others)
    seconds = [j["seconds"] for j in mine if j["seconds"] is not None]
    gold = gold_accuracy(mine).get(annotator_id)
    return {
        "judgements": len(mine),
        "median_seconds": statistics.median(seconds) if seconds else None,
        "tie_rate": (sum(j["choice"] in TIE_NAMES for j in mine) / len(mine)) if mine else None,
        "rationale_rate": (sum(bool(j["rationale"]) for j in mine) / len(mine)) if mine else None,
        "with_majority": agree / shared if shared else None, "shared_tasks": shared,
        "gold_n": gold["n"] if gold else 0, "gold_accuracy": gold["accuracy"] if gold else None,
        "recent": [{"task_id": j["task_id"], "prompt": j["prompt"], "label": describe(j),
                    "strength": j["strength"], "rationale": j["rationale"], "seconds": j["seconds"],
                    "gold": describe_gold(j), "score": gold_score(j), "created_at": j["created_at"]}
                   for j in sorted(mine, key=lambda j: j["judgement_id"], reverse=True)[:recent]],
    }
