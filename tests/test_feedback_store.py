"""The feedback store: schema/migrations, overlap queue, canonical judgements, concurrency, errors.

Tests taking ``store`` or ``store_url`` run on SQLite and on a throwaway PostgreSQL cluster
(conftest.py)."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from sqlalchemy import inspect

from rlhfkit.errors import DataError
from rlhfkit.feedback.store import (ConflictError, FeedbackStore, NotFoundError, StoreError, displayed_order,
                                    head_revision)


@pytest.fixture
def store(store_url):
    s = FeedbackStore(store_url)
    yield s
    s.close()


def _responses(store, project, prompt="how was the film ?", n=2, model="m"):
    pid = store.add_prompt(project, prompt)
    return [store.add_response(pid, f"{prompt} answer {i}", f"{model}{i % 2}") for i in range(n)]


def _ann(store, name):
    # scrypt makes add_annotator slow on purpose; tests create only a handful.
    return store.add_annotator(name, "pw-" + name)


# ---------------------------------------------------------------------------------------------
# schema


def test_fresh_db_is_at_head_wal_and_reopening_is_a_noop(tmp_path):
    path = tmp_path / "new.db"
    s1 = FeedbackStore(path)
    assert s1.revision == head_revision() == "0004"
    assert s1.journal_mode() == "wal"
    tables = set(inspect(s1.engine).get_table_names())
    assert {"projects", "guidelines", "prompts", "responses", "tasks", "task_responses", "annotators",
            "sessions", "judgements", "skips", "alembic_version"} <= tables
    s1.create_project("p")
    s1.close()
    s2 = FeedbackStore(f"sqlite:///{path}")  # the same file by URL: nothing re-created, data kept
    assert s2.revision == "0004"
    assert [p.name for p in s2.list_projects()] == ["p"]
    with s2.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert c.exec_driver_sql("SELECT count(*) FROM alembic_version").scalar() == 1
    s2.close()


def test_guidelines_are_versioned(store):
    p = store.create_project("p", "v1 text", annotators_per_task=2)
    assert (p.guideline_version, p.guidelines, p.annotators_per_task) == (1, "v1 text", 2)
    assert store.update_guidelines("p", "v2 text") == 2
    assert store.get_project("p").guidelines == "v2 text"
    assert [g["markdown"] for g in store.guideline_history("p")] == ["v1 text", "v2 text"]
    a = _ann(store, "ann")
    store.create_task("p", _responses(store, "p"))
    v = store.next_task("p", a.id)
    assert v.guideline_version == 2
    store.submit(v.id, a.id, choice="A", displayed_order=[i for i, _ in v.responses])
    assert store.judgements("p")[0]["guideline_version"] == 2


def test_passwords_and_sessions(store):
    a = store.add_annotator("alice", "s3cret", role="admin")
    assert store.authenticate("alice", "s3cret") == a and a.role == "admin"
    assert store.authenticate("alice", "wrong") is None
    assert store.authenticate("nobody", "s3cret") is None
    with store.engine.connect() as c:
        stored = c.exec_driver_sql("SELECT password_hash, salt FROM annotators").one()
    assert "s3cret" not in stored[0] and stored[0].startswith("scrypt:")
    token = store.create_session(a.id)
    assert store.annotator_for_session(token) == a
    assert store.annotator_for_session(token + "x") is None
    with store.engine.connect() as c:
        assert c.exec_driver_sql("SELECT token_hash FROM sessions").scalar() != token  # stored hashed
    store.end_session(token)
    assert store.annotator_for_session(token) is None


def test_prompts_and_responses_are_idempotent(store):
    store.create_project("p")
    pid = store.add_prompt("p", "x")
    assert store.add_prompt("p", "x") == pid
    r = store.add_response(pid, "y", "m1")
    assert store.add_response(pid, "y", "m1") == r
    assert store.add_response(pid, "y", "m2") != r  # another model's identical text is another response


# ---------------------------------------------------------------------------------------------
# the queue


def test_overlap_each_task_to_exactly_k_distinct_annotators_calibration_first(store):
    store.create_project("p", annotators_per_task=2)
    tasks = [store.create_task("p", _responses(store, "p", prompt=f"prompt {i}")) for i in range(5)]
    cal = store.create_task("p", _responses(store, "p", prompt="calibration prompt"), calibration=True)
    anns = [_ann(store, f"a{i}") for i in range(4)]
    seen: dict[int, list[int]] = {}
    first = {}
    active = list(anns)
    while active:
        for a in list(active):
            v = store.next_task("p", a.id)
            if v is None:
                active.remove(a)
                continue
            first.setdefault(a.id, v.id)
            assert a.id not in seen.get(v.id, [])  # never the same annotator twice
            seen.setdefault(v.id, []).append(a.id)
            store.submit(v.id, a.id, choice="B", displayed_order=[i for i, _ in v.responses])
    assert all(t == cal for t in first.values())  # everyone starts with the calibration task
    assert sorted(seen[cal]) == sorted(a.id for a in anns)  # calibration: every annotator
    for t in tasks:
        assert len(seen[t]) == 2 and len(set(seen[t])) == 2  # exactly k distinct
    prog = store.progress("p")
    assert prog["judgements"] == 4 + 5 * 2 and prog["tasks_complete"] == 6 and prog["judgements_open"] == 0


def test_next_task_is_stable_until_answered_and_skip_frees_the_slot(store):
    store.create_project("p", annotators_per_task=1)
    t1 = store.create_task("p", _responses(store, "p", prompt="one"))
    t2 = store.create_task("p", _responses(store, "p", prompt="two"))
    a, b = _ann(store, "a"), _ann(store, "b")
    assert store.next_task("p", a.id).id == t1
    assert store.next_task("p", a.id).id == t1  # a reload shows the same task
    assert store.next_task("p", b.id).id == t2  # t1's only slot is reserved by a
    assert store.next_task("p", b.id).id == t2
    store.skip(t1, a.id)
    assert store.next_task("p", a.id) is None  # skipped t1; t2 is reserved by b
    v = store.next_task("p", b.id)
    store.submit(v.id, b.id, choice="A", displayed_order=[i for i, _ in v.responses])
    assert store.next_task("p", b.id).id == t1  # a's skip freed t1's slot
    assert store.progress("p")["skips"] == 1


def test_expired_reservation_frees_the_slot(store_url):
    s = FeedbackStore(store_url, lease_seconds=0)
    s.create_project("p")
    t = s.create_task("p", _responses(s, "p"))
    a, b = _ann(s, "a"), _ann(s, "b")
    assert s.next_task("p", a.id).id == t
    assert s.next_task("p", b.id).id == t  # a's lease ran out at once
    s.close()


def test_concurrent_next_task_never_overfills_a_task(store_url):
    """8 threads race for 3 tasks x 2 slots: exactly 6 reservations, none beyond a task's k."""
    s = FeedbackStore(store_url)
    s.create_project("p", annotators_per_task=2)
    for i in range(3):
        s.create_task("p", _responses(s, "p", prompt=f"p{i}"))
    anns = [s.add_annotator(f"t{i}", "pw") for i in range(8)]
    got: dict[int, int | None] = {}
    barrier = threading.Barrier(len(anns))

    def worker(a):
        barrier.wait()
        v = s.next_task("p", a.id)
        got[a.id] = v.id if v else None
        if v:
            s.submit(v.id, a.id, choice="A", displayed_order=[i for i, _ in v.responses])

    threads = [threading.Thread(target=worker, args=(a,)) for a in anns]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    per_task = Counter(t for t in got.values() if t is not None)
    assert sorted(per_task.values()) == [2, 2, 2]
    assert sum(t is None for t in got.values()) == 2
    assert len(s.judgements("p")) == 6
    s.close()


# ---------------------------------------------------------------------------------------------
# displayed order and canonical judgements


def test_displayed_order_is_deterministic_and_balanced():
    assert displayed_order(7, 3, [10, 11]) == displayed_order(7, 3, [10, 11])
    firsts = Counter(displayed_order(t, a, [1, 2])[0] for t in range(50) for a in range(20))
    assert 430 <= firsts[1] <= 570  # 1000 draws, p = 0.5: +-4.4 sigma
    firsts3 = Counter(displayed_order(t, a, [1, 2, 3])[0] for t in range(50) for a in range(20))
    assert all(270 <= firsts3[i] <= 400 for i in (1, 2, 3))


def test_view_hides_model_ids_and_uses_the_annotator_order(store):
    store.create_project("p")
    ids = _responses(store, "p")
    t = store.create_task("p", ids)
    a = _ann(store, "a")
    v = store.next_task("p", a.id)
    assert [i for i, _ in v.responses] == displayed_order(t, a.id, ids)
    assert all(isinstance(text, str) and len(pair) == 2 for pair in v.responses for text in pair[1:])
    assert v.kind == "pair" and not v.calibration


def test_canonical_choice_from_the_displayed_order(store):
    """Hand example: canonical [r0, r1]; shown [r1, r0]; "A" (left) means r1 won = canonical "B"."""
    store.create_project("p", annotators_per_task=3)
    r0, r1 = _responses(store, "p")
    t = store.create_task("p", [r0, r1])
    a, b, c = _ann(store, "a"), _ann(store, "b"), _ann(store, "c")
    store.submit(t, a.id, choice="A", strength=4, displayed_order=[r1, r0], seconds=3.5, rationale="clearer")
    store.submit(t, b.id, choice="B", displayed_order=[r1, r0])
    store.submit(t, c.id, choice="tie_bad", displayed_order=[r0, r1])
    ja, jb, jc = store.judgements("p")
    assert (ja["choice"], ja["winner_id"], ja["position_chosen"], ja["strength"]) == ("B", r1, 0, 4)
    assert ja["displayed_order"] == [r1, r0] and ja["response_ids"] == [r0, r1]
    assert ja["seconds"] == 3.5 and ja["rationale"] == "clearer" and ja["model_ids"] == ["m0", "m1"]
    assert (jb["choice"], jb["winner_id"], jb["position_chosen"]) == ("A", r0, 1)
    assert (jc["choice"], jc["winner_id"], jc["position_chosen"]) == ("tie_bad", None, None)


def test_ranking_task(store):
    store.create_project("p")
    ids = _responses(store, "p", n=4)
    t = store.create_task("p", ids)
    a = _ann(store, "a")
    v = store.next_task("p", a.id)
    assert v.kind == "ranking" and len(v.responses) == 4
    shown = [i for i, _ in v.responses]
    store.submit(t, a.id, ranking=[[ids[2]], [ids[0], ids[3]], [ids[1]]], displayed_order=shown)
    j = store.judgements("p")[0]
    assert j["ranking"] == [[ids[2]], [ids[0], ids[3]], [ids[1]]] and j["winner_id"] == ids[2]
    assert j["position_chosen"] == shown.index(ids[2]) and j["choice"] is None


# ---------------------------------------------------------------------------------------------
# bad input


def test_bad_input_names_the_field(store):
    with pytest.raises(NotFoundError, match="unknown project 'nope'") as e:
        store.get_project("nope")
    assert isinstance(e.value, DataError) and isinstance(e.value, ValueError) and e.value.field == "project"
    store.create_project("p")
    with pytest.raises(ConflictError, match="already exists"):
        store.create_project("p")
    r0, r1 = _responses(store, "p")
    t = store.create_task("p", [r0, r1])
    a = _ann(store, "a")
    cases = [
        (dict(choice="C", displayed_order=[r0, r1]), "choice"),
        (dict(choice="A", strength=5, displayed_order=[r0, r1]), "strength"),
        (dict(choice="A", strength=True, displayed_order=[r0, r1]), "strength"),
        (dict(choice="A", displayed_order=[r0, 999]), "displayed_order"),
        (dict(ranking=[[r0], [r1]], displayed_order=[r0, r1]), "ranking"),
        (dict(choice="A", displayed_order=[r0, r1], seconds=-1), "seconds"),
    ]
    for kwargs, field in cases:
        with pytest.raises(StoreError) as e:
            store.submit(t, a.id, **kwargs)
        assert e.value.field == field, kwargs
    with pytest.raises(NotFoundError) as e:
        store.submit(12345, a.id, choice="A", displayed_order=[r0, r1])
    assert e.value.field == "task_id"
    assert store.judgements("p") == []  # nothing stored by any of the above
    with pytest.raises(StoreError) as e:
        store.create_task("p", [r0])
    assert e.value.field == "response_ids"
    other = store.add_prompt("p", "another prompt")
    r2 = store.add_response(other, "z", "m")
    with pytest.raises(StoreError, match="same prompt"):
        store.create_task("p", [r0, r2])
    with pytest.raises(StoreError) as e:
        store.add_annotator("b", "pw", role="boss")
    assert e.value.field == "role"


def test_judging_twice_same_is_idempotent_different_is_an_error(store):
    store.create_project("p")
    r0, r1 = _responses(store, "p")
    t = store.create_task("p", [r0, r1])
    a = _ann(store, "a")
    first = store.submit(t, a.id, choice="A", strength=2, displayed_order=[r0, r1])
    assert store.submit(t, a.id, choice="A", strength=2, displayed_order=[r0, r1]) == first
    with pytest.raises(ConflictError, match="already judged") as e:
        store.submit(t, a.id, choice="B", displayed_order=[r0, r1])
    assert e.value.field == "task_id"
    assert len(store.judgements("p")) == 1
    with pytest.raises(ConflictError):
        store.skip(t, a.id)


def test_submitting_to_a_full_task_without_a_reservation_is_refused(store):
    store.create_project("p", annotators_per_task=1)
    r0, r1 = _responses(store, "p")
    t = store.create_task("p", [r0, r1])
    a, b = _ann(store, "a"), _ann(store, "b")
    store.submit(t, a.id, choice="A", displayed_order=[r0, r1])
    with pytest.raises(ConflictError, match="not assigned"):
        store.submit(t, b.id, choice="A", displayed_order=[r0, r1])


def test_rationales_over_the_limit_are_refused_on_every_path(store):
    """The JSON API refused rationales over 20,000 characters while the form path stored 900,000:
    the store itself holds the limit, so no path can exceed it."""
    store.create_project("p", annotators_per_task=2)
    r0, r1 = _responses(store, "p")
    t = store.create_task("p", [r0, r1])
    a, b = _ann(store, "a"), _ann(store, "b")
    with pytest.raises(StoreError, match="900000 characters long; at most 20000") as e:
        store.submit(t, a.id, choice="A", displayed_order=[r0, r1], rationale="x" * 900_000)
    assert e.value.field == "rationale" and store.judgements("p") == []
    store.submit(t, b.id, choice="A", displayed_order=[r0, r1], rationale="y" * 20_000)  # at the limit: kept
    assert [len(j["rationale"]) for j in store.judgements("p")] == [20_000]


@pytest.mark.parametrize("name", ["a/b", "..", ".hidden", "x" * 101, "tab\there", "ünïcode"])
def test_project_names_that_cannot_be_a_url_segment_are_refused(store, name):
    with pytest.raises(StoreError, match="is not a project name") as e:
        store.create_project(name)
    assert e.value.field == "name" and store.list_projects() == []


def test_project_names_with_dots_dashes_and_spaces_are_fine(store):
    for name in ("reviews", "round-2.v1", "my project_3"):
        assert store.create_project(name).name == name


def test_an_error_names_what_it_got_without_echoing_a_huge_input(store):
    store.create_project("p", annotators_per_task=1)
    r0, r1 = _responses(store, "p")
    t = store.create_task("p", [r0, r1])
    a = _ann(store, "a")
    with pytest.raises(StoreError, match="displayed_order") as e:
        store.submit(t, a.id, choice="A", displayed_order=list(range(100_000)))
    assert len(str(e.value)) < 400 and "characters)" in str(e.value)


def test_a_skipped_task_cannot_be_judged_by_the_one_who_skipped_it(store):
    store.create_project("p", annotators_per_task=1)
    r0, r1 = _responses(store, "p")
    t = store.create_task("p", [r0, r1])
    a, b = _ann(store, "a"), _ann(store, "b")
    assert store.next_task("p", a.id).id == t
    store.skip(t, a.id)
    with pytest.raises(ConflictError, match=f"task {t} was skipped by this annotator"):
        store.submit(t, a.id, choice="A", displayed_order=[r0, r1])
    assert store.judgements("p") == []
    assert store.next_task("p", b.id).id == t  # the freed slot goes to someone else
    store.submit(t, b.id, choice="B", displayed_order=[r1, r0])
    assert [j["annotator"] for j in store.judgements("p")] == ["b"]
