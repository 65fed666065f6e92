"""The labelling queue under load, on SQLite and on PostgreSQL (conftest.store_url): 50 annotators,
each a thread with its own store calls, take 200 tasks each (next_task -> submit) from one project
whose tasks all want 10 annotators, so every thread races the others for the same oldest tasks.
Nothing may be lost (every submit that returned an id is stored), nothing duplicated (no annotator
twice on a task), no task may go over its 10, and the whole run is bounded in time."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from rlhfkit.feedback.store import FeedbackStore

ANNOTATORS, EACH, PER_TASK = 50, 200, 10
TASKS = ANNOTATORS * EACH // PER_TASK + 50  # 10,500 slots for 10,000 judgements: never runs dry
DEADLINE_S = 1200  # the bound: far above a normal run (minutes on 2 busy cores), far below a hang


@pytest.mark.slow
def test_fifty_annotators_times_two_hundred_judgements_lose_and_duplicate_nothing(store_url):
    store = FeedbackStore(store_url)
    try:
        store.create_project("c", annotators_per_task=PER_TASK)
        pid = store.add_prompt("c", "one prompt, many answers")
        for i in range(TASKS):
            store.create_task("c", [store.add_response(pid, f"left {i}", "m1"),
                                    store.add_response(pid, f"right {i}", "m2")])
        people = [store.add_annotator(f"ann{k:02d}", f"pw-ann{k:02d}") for k in range(ANNOTATORS)]
        failures: list[str] = []
        stored: dict[int, list[tuple[int, int]]] = {}  # annotator id -> (task id, judgement id)
        barrier = threading.Barrier(ANNOTATORS)

        def annotator(a) -> None:
            mine = []
            try:
                barrier.wait()
                for _ in range(EACH):
                    v = store.next_task("c", a.id)
                    if v is None:
                        failures.append(f"{a.name}: the queue ran dry after {len(mine)}")
                        break
                    jid = store.submit(v.id, a.id, choice="A", displayed_order=[i for i, _ in v.responses])
                    mine.append((v.id, jid))
            except Exception as e:  # surfaced by the assertion below, with the annotator's name
                failures.append(f"{a.name}: {e!r}")
            stored[a.id] = mine

        start = time.monotonic()
        threads = [threading.Thread(target=annotator, args=(a,), daemon=True) for a in people]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=max(1.0, DEADLINE_S - (time.monotonic() - start)))
        elapsed = time.monotonic() - start
        assert not any(t.is_alive() for t in threads), f"still running after {elapsed:.0f} s"
        assert failures == []
        js = store.judgements("c")
        made = [(t, a, jid) for a, rows in stored.items() for t, jid in rows]
        pairs = Counter((j["task_id"], j["annotator_id"]) for j in js)
        lost = {jid for _, _, jid in made} - {j["judgement_id"] for j in js}
        print(f"\n{store_url.split(':')[0]}: {len(js)} judgements by {ANNOTATORS} annotators in "
              f"{elapsed:.1f} s; lost {len(lost)}, duplicated {sum(n - 1 for n in pairs.values())}")
        assert len(made) == ANNOTATORS * EACH and len(js) == ANNOTATORS * EACH
        assert lost == set()                                                  # none lost
        assert max(pairs.values()) == 1                                       # none duplicated
        assert sorted(pairs) == sorted((t, a) for t, a, _ in made)            # exactly those
        assert max(Counter(j["task_id"] for j in js).values()) <= PER_TASK    # overlap cap held
        assert store.progress("c")["judgements"] == ANNOTATORS * EACH
    finally:
        store.close()
