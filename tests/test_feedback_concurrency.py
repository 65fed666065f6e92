"""The labelling queue under load, on SQLite and on PostgreSQL (conftest.store_url): 20 annotators,
each a thread with its own store calls, take 40 tasks each from one project whose tasks all want 5
annotators, so every thread races the others for the same oldest tasks. Nothing may be lost (every
submit that returned an id is stored), nothing duplicated (no annotator twice on a task), no task may
go over its 5, and the run is bounded in time. The full-scale run (50 x 200 = 10,000 judgements per
backend) is bench/store_concurrency.py: it takes minutes per backend, too long for every CI run."""

from __future__ import annotations

from collections import Counter

import pytest

from rlhfkit.testing.queue_load import run_queue_load

ANNOTATORS, EACH, PER_TASK = 20, 40, 5
DEADLINE_S = 600  # the bound: far above a normal run (seconds), far below a hang


@pytest.mark.slow
def test_twenty_annotators_racing_for_the_same_tasks_lose_and_duplicate_nothing(store_url):
    r = run_queue_load(store_url, ANNOTATORS, EACH, PER_TASK, deadline_s=DEADLINE_S)
    print(f"\n{store_url.split(':')[0]}: {len(r.stored)} judgements by {ANNOTATORS} annotators in "
          f"{r.seconds:.1f} s; lost {len(r.lost)}, duplicated {r.duplicated}")
    assert r.alive == 0, f"still running after {r.seconds:.0f} s"
    assert r.failures == []
    assert len(r.made) == ANNOTATORS * EACH and len(r.stored) == ANNOTATORS * EACH
    assert r.lost == set()                                                    # none lost
    assert r.duplicated == 0                                                  # none duplicated
    assert sorted((j["task_id"], j["annotator_id"]) for j in r.stored) == sorted(
        (t, a) for t, a, _ in r.made)                                         # exactly those
    assert r.max_per_task <= PER_TASK                                         # overlap cap held
    # The race really happened: the oldest tasks were filled to their cap, not spread thinly.
    assert Counter(j["task_id"] for j in r.stored).most_common(1)[0][1] == PER_TASK
    assert r.progress_judgements == ANNOTATORS * EACH
