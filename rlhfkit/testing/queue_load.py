"""The labelling queue under load: N annotators, each a thread with its own store calls, take M
tasks each (``next_task`` -> ``submit``) from one project whose tasks all want K annotators, so every
thread races the others for the same oldest tasks.

Used at a small scale by tests/test_feedback_concurrency.py (on SQLite and PostgreSQL, every CI run)
and at full scale (50 x 200 = 10,000 judgements) by bench/store_concurrency.py. It measures; the
callers decide what must hold (nothing lost, nothing duplicated, no task over K, bounded time).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass

from rlhfkit.feedback.store import FeedbackStore


@dataclass
class LoadResult:
    annotators: int
    each: int
    per_task: int
    seconds: float
    alive: int  # threads still running at the deadline (a hang)
    failures: list[str]
    made: list[tuple[int, int, int]]  # (task id, annotator id, judgement id) that submit returned
    stored: list[dict]  # store.judgements(project) afterwards
    progress_judgements: int

    @property
    def lost(self) -> set[int]:
        return {jid for _, _, jid in self.made} - {j["judgement_id"] for j in self.stored}

    @property
    def duplicated(self) -> int:
        pairs = Counter((j["task_id"], j["annotator_id"]) for j in self.stored)
        return sum(n - 1 for n in pairs.values())

    @property
    def max_per_task(self) -> int:
        return max(Counter(j["task_id"] for j in self.stored).values(), default=0)


def run_queue_load(store_url: str, annotators: int, each: int, per_task: int,
                   deadline_s: float = 1200.0, project: str = "c") -> LoadResult:
    """Create the project (``annotators * each / per_task`` tasks plus 50 spare, so the queue never
    runs dry), start the threads together behind a barrier, join them within ``deadline_s``."""
    store = FeedbackStore(store_url)
    try:
        store.create_project(project, annotators_per_task=per_task)
        pid = store.add_prompt(project, "one prompt, many answers")
        for i in range(annotators * each // per_task + 50):
            store.create_task(project, [store.add_response(pid, f"left {i}", "m1"),
                                        store.add_response(pid, f"right {i}", "m2")])
        people = [store.add_annotator(f"ann{k:02d}", f"pw-ann{k:02d}") for k in range(annotators)]
        failures: list[str] = []
        stored: dict[int, list[tuple[int, int]]] = {}  # annotator id -> (task id, judgement id)
        barrier = threading.Barrier(annotators)

        def annotator(a) -> None:
            mine = []
            try:
                barrier.wait()
                for _ in range(each):
                    v = store.next_task(project, a.id)
                    if v is None:
                        failures.append(f"{a.name}: the queue ran dry after {len(mine)}")
                        break
                    jid = store.submit(v.id, a.id, choice="A", displayed_order=[i for i, _ in v.responses])
                    mine.append((v.id, jid))
            except Exception as e:  # reported by the caller, with the annotator's name
                failures.append(f"{a.name}: {e!r}")
            stored[a.id] = mine

        start = time.monotonic()
        threads = [threading.Thread(target=annotator, args=(a,), daemon=True) for a in people]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=max(1.0, deadline_s - (time.monotonic() - start)))
        seconds = time.monotonic() - start
        return LoadResult(
            annotators=annotators, each=each, per_task=per_task, seconds=seconds,
            alive=sum(t.is_alive() for t in threads), failures=failures,
            made=[(t, a, jid) for a, rows in stored.items() for t, jid in rows],
            stored=store.judgements(project), progress_judgements=store.progress(project)["judgements"])
    finally:
        store.close()
