"""Annotator management, project membership, gold questions, rationales out, and the migration that
adds them (0003) -- in the store and in `rlhf label export`, on SQLite and PostgreSQL
(conftest.store_url). The web side is tests/test_feedback_people_web.py."""

from __future__ import annotations

import pytest

from rlhfkit.errors import DataError
from rlhfkit.feedback import quality
from rlhfkit.feedback.export import export_rows
from rlhfkit.feedback.store import ConflictError, FeedbackStore, ForbiddenError, NotFoundError, StoreError


@pytest.fixture
def store(store_url):
    s = FeedbackStore(store_url)
    yield s
    s.close()


def _task(store, project, i, models=("m0", "m1")):
    pid = store.add_prompt(project, f"prompt {i}")
    return store.create_task(project, [store.add_response(pid, f"answer {i} by {m}", m) for m in models])


def _judge(store, annotator, view, choice="A", **kw):
    shown = [i for i, _ in view.responses]
    return store.submit(view.id, annotator.id, choice=choice, displayed_order=shown, **kw)


# ------------------------------------------------------------------------------------ accounts


def test_deactivation_locks_out_ends_sessions_and_frees_reservations(store):
    store.create_project("p", annotators_per_task=1)
    t = _task(store, "p", 0)
    alice, bob = store.add_annotator("alice", "alice-pw"), store.add_annotator("bob", "bob-pw")
    token = store.create_session(alice.id)
    assert store.next_task("p", alice.id).id == t      # alice holds the only slot
    assert store.next_task("p", bob.id) is None
    info = store.set_active(alice.id, False)
    assert info.active is False and store.get_annotator("alice").active is False
    assert store.annotator_for_session(token) is None  # her session ended
    assert store.session_count(alice.id) == 0
    assert store.authenticate("alice", "alice-pw") is None
    shown = store.authenticate("alice", "alice-pw", include_inactive=True)
    assert shown is not None and shown.active is False  # the login page can say why
    assert store.authenticate("alice", "wrong", include_inactive=True) is None
    with pytest.raises(ForbiddenError, match="deactivated") as e:
        store.next_task("p", alice.id)
    assert e.value.field == "annotator_id"
    assert store.next_task("p", bob.id).id == t         # her reservation was freed
    store.set_active(alice.id, True)
    assert store.authenticate("alice", "alice-pw") is not None
    with pytest.raises(NotFoundError):
        store.set_active(999_999, False)


def test_a_deactivated_annotators_judgements_stay(store):
    store.create_project("p", annotators_per_task=1)
    _task(store, "p", 0)
    a = store.add_annotator("alice", "alice-pw")
    _judge(store, a, store.next_task("p", a.id))
    store.set_active(a.id, False)
    assert [j["annotator"] for j in store.judgements("p")] == ["alice"]


def test_reset_password_forces_a_change_and_ends_sessions(store):
    a = store.add_annotator("alice", "alice-pw")
    token = store.create_session(a.id)
    new = store.reset_password(a.id)
    assert len(new) >= 16 and store.annotator_for_session(token) is None
    assert store.authenticate("alice", "alice-pw") is None
    me = store.authenticate("alice", new)
    assert me.must_change_password is True
    with pytest.raises(StoreError, match="differ") as e:
        store.change_password(a.id, new, new)
    assert e.value.field == "new"
    store.change_password(a.id, new, "my own password")
    assert store.authenticate("alice", "my own password").must_change_password is False


def test_invited_accounts_must_change_and_end_all_sessions(store):
    a = store.add_annotator("dave", "generated-pw-123", must_change_password=True)
    assert a.must_change_password and store.get_annotator_by_id(a.id) == a
    tokens = [store.create_session(a.id) for _ in range(3)]
    assert store.session_count(a.id) == 3
    assert store.end_all_sessions(a.id) == 3
    assert all(store.annotator_for_session(t) is None for t in tokens)
    with pytest.raises(NotFoundError) as e:
        store.get_annotator_by_id(424242)
    assert e.value.field == "annotator_id"


# ------------------------------------------------------------------------------------ membership


def test_members_only_project_refuses_non_members_everywhere(store):
    store.create_project("open")
    store.create_project("closed", annotators_per_task=2)
    t = _task(store, "closed", 0)
    alice, bob = store.add_annotator("alice", "pw-alice"), store.add_annotator("bob", "pw-bob")
    root = store.add_annotator("root", "pw-root", role="admin")
    assert store.set_members_only("closed", True).members_only is True
    store.add_member("closed", alice.id)
    store.add_member("closed", alice.id)  # twice: a no-op
    assert [m.name for m in store.members("closed")] == ["alice"]
    assert [p.name for p in store.projects_for(bob.id)] == ["open"]
    assert [p.name for p in store.projects_for(alice.id)] == ["open", "closed"]
    assert [p.name for p in store.projects_for(root.id)] == ["open", "closed"]  # admins always may
    ids = store.tasks("closed")[0]["response_ids"]
    for call in (lambda: store.next_task("closed", bob.id), lambda: store.skip(t, bob.id),
                 lambda: store.submit(t, bob.id, choice="A", displayed_order=ids)):
        with pytest.raises(ForbiddenError, match="members only") as e:
            call()
        assert e.value.field == "project"
    assert store.judgements("closed") == []
    assert store.next_task("closed", alice.id).id == t and store.next_task("closed", root.id).id == t
    store.remove_member("closed", alice.id)
    assert not store.may_label("closed", alice.id)
    store.set_members_only("closed", False)
    assert store.may_label("closed", bob.id)
    with pytest.raises(NotFoundError):
        store.add_member("closed", 999_999)


# ------------------------------------------------------------------------------------ gold questions


def test_gold_answers_are_validated_and_stored_canonically(store):
    store.create_project("p")
    t = _task(store, "p", 0)
    k = _task(store, "p", 1, models=("m0", "m1", "m2"))
    cal = store.create_task("p", [store.add_response(store.add_prompt("p", "c"), x, "m") for x in ("x", "y")],
                            calibration=True)
    ids = store.tasks("p")[1]["response_ids"]
    assert store.set_gold(t, choice="B")["choice"] == "B"
    assert store.set_gold(k, ranking=[[ids[2]], [ids[0], ids[1]]])["ranking"] == [[ids[2]], [ids[0], ids[1]]]
    for kwargs, field in ((dict(choice="C"), "choice"), (dict(ranking=[[1], [2]]), "ranking")):
        with pytest.raises(StoreError) as e:
            store.set_gold(t if "choice" in kwargs else k, **kwargs)
        assert e.value.field == field
    with pytest.raises(StoreError, match="calibration"):
        store.set_gold(cal, choice="A")
    with pytest.raises(NotFoundError):
        store.set_gold(987_654, choice="A")
    assert store.progress("p")["gold_tasks"] == 2
    store.clear_gold(t)
    assert [x["gold_answer"] is not None for x in store.tasks("p")] == [False, True, False]


def test_gold_questions_reach_everyone_unannounced_at_random_points_and_score_them(store):
    """12 ordinary tasks wanting 1 annotator each, 2 gold ones: each of 3 annotators gets both gold
    questions (no cap), never flagged, and not both at the very start; scores by hand."""
    store.create_project("p", annotators_per_task=1)
    tasks = [_task(store, "p", i) for i in range(14)]
    gold = {tasks[3]: "A", tasks[9]: "tie_bad"}
    for tid, answer in gold.items():
        store.set_gold(tid, choice=answer)
    people = [store.add_annotator(n, "pw-" + n) for n in ("a", "b", "c")]
    served: dict[int, list[int]] = {a.id: [] for a in people}
    active = list(people)
    while active:
        for a in list(active):
            v = store.next_task("p", a.id)
            if v is None:
                active.remove(a)
                continue
            assert v.calibration is False  # a gold question looks like any other task
            served[a.id].append(v.id)
            canon = store.tasks("p")[tasks.index(v.id)]["response_ids"]
            if v.id in gold:  # canonical answers: a always right, b right on the first only, c never
                right = gold[v.id]
                pick = {"a": right, "b": right if v.id == tasks[3] else "B", "c": "B"}[a.name]
                if pick in ("A", "B"):  # canonical -> relative to the order shown
                    pick = "A" if [i for i, _ in v.responses][0] == canon["AB".index(pick)] else "B"
                _judge(store, a, v, choice=pick)
            else:
                _judge(store, a, v)
    for a in people:
        assert set(gold) <= set(served[a.id])                     # both gold questions, every annotator
    positions = [served[a.id].index(g) for a in people for g in gold]
    assert sorted(positions) != [0, 0, 0, 1, 1, 1]                # mixed in, not all up front
    ordinary = [tid for tid in tasks if tid not in gold]
    js = store.judgements("p")
    assert sorted(j["task_id"] for j in js if j["task_id"] in ordinary) == sorted(ordinary)  # cap held
    acc = {row["annotator"]: (row["n"], row["accuracy"]) for row in quality.gold_accuracy(js).values()}
    assert acc == {"a": (2, 1.0), "b": (2, 0.5), "c": (2, 0.0)}
    assert store.progress("p")["judgements_open"] == 0


def test_ranking_gold_scores_the_share_of_pairs_in_the_gold_order():
    j = {"kind": "ranking", "response_ids": [1, 2, 3], "ranking": [[2], [1], [3]],
         "gold_answer": {"choice": None, "ranking": [[1], [2], [3]]}}
    assert quality.gold_score(j) == pytest.approx(2 / 3)  # 1-3 and 2-3 right, 1-2 swapped
    tie = {**j, "ranking": [[1, 2], [3]]}
    assert quality.gold_score(tie) == pytest.approx(2 / 3)  # a tie where gold orders is wrong
    assert quality.gold_score({**j, "gold_answer": None}) is None
    assert quality.describe(j) == "B > A > C" and quality.describe(tie) == "A = B > C"


# ------------------------------------------------------------------------------------ export


@pytest.fixture
def split(store):
    """Three annotators on 4 pair tasks (2 gold, answer "A"): x is right on both gold tasks, y on
    one, z on none; task 1 splits 2-1 with rationales."""
    store.create_project("p", annotators_per_task=3)
    tasks = [_task(store, "p", i) for i in range(4)]
    store.set_gold(tasks[2], choice="A")
    store.set_gold(tasks[3], choice="A")
    people = {n: store.add_annotator(n, "pw-" + n) for n in ("x", "y", "z")}
    votes = {"x": "AAAA", "y": "ABAB", "z": "AABB"}
    for n, a in people.items():
        for tid, vote in zip(tasks, votes[n]):
            ids = store.tasks("p")[tasks.index(tid)]["response_ids"]
            store.submit(tid, a.id, choice=vote, displayed_order=ids, rationale=f"{n} says {vote} on {tid}")
    return store, tasks, people


def test_export_rows_carry_rationale_and_annotator(split):
    store, tasks, people = split
    rows, _ = export_rows(store, "p")
    assert len(rows) == 12
    for r in rows:
        vote = "A" if r["chosen_id"] < r["rejected_id"] else "B"  # A: the task's first (older) response
        assert r["rationale"] == f"{r['annotator']} says {vote} on {r['task_id']}"
        assert r["annotator_id"] == people[r["annotator"]].id
    majority, _ = export_rows(store, "p", aggregate="majority")
    row = next(r for r in majority if r["task_id"] == tasks[1])
    assert row["rationales"] == [f"{n} says {v} on {tasks[1]}" for n, v in zip("xyz", "ABA")]
    assert row["annotator_ids"] == [people[n].id for n in "xyz"]


def test_export_exclude_below_drops_annotators_under_the_gold_threshold(split, tmp_path):
    from rlhfkit.config import LabelExportConfig
    from rlhfkit.feedback.export import export

    store, tasks, people = split
    rows, stats = export_rows(store, "p", exclude_below=0.7)  # x 1.0 kept; y 0.5 and z 0.0 dropped
    assert {r["annotator"] for r in rows} == {"x"} and len(rows) == 4
    assert stats["annotators_excluded_below_gold"] == 2 and stats["judgements_excluded_below_gold"] == 8
    assert stats["annotators_without_gold"] == 0
    rows, stats = export_rows(store, "p", exclude_below=0.5)
    assert {r["annotator"] for r in rows} == {"x", "y"} and stats["annotators_excluded_below_gold"] == 1
    out = export(LabelExportConfig(store=store.url, project="p", output=str(tmp_path / "o.jsonl"),
                                   exclude_below=0.7))
    assert len(out.read_text().splitlines()) == 4
    with pytest.raises(ValueError, match="exclude_below"):
        LabelExportConfig(store=store.url, project="p", output="x.jsonl", exclude_below=1.5)


def test_exclude_below_without_gold_questions_is_an_error_naming_the_field(store):
    store.create_project("p")
    t = _task(store, "p", 0)
    a = store.add_annotator("a", "pw-a")
    store.submit(t, a.id, choice="A", displayed_order=store.tasks("p")[0]["response_ids"])
    with pytest.raises(DataError, match="needs gold questions") as e:
        export_rows(store, "p", exclude_below=0.7)
    assert e.value.field == "exclude_below"


def test_disagreements_and_annotator_record(split):
    store, tasks, people = split
    js = store.judgements("p")
    review = quality.disagreements(js)
    assert [t["task_id"] for t in review] == tasks[1:]  # all split 2-1 (task 0 is unanimous): by id
    first = next(t for t in review if t["task_id"] == tasks[1])
    assert first["agreement"] == pytest.approx(2 / 3)
    assert first["labels"] == [("A better", 2), ("B better", 1)]
    assert [j["rationale"] for j in first["judgements"]] == [f"{n} says {v} on {tasks[1]}" for n, v in
                                                              zip("xyz", "ABA")]
    rec = quality.annotator_record(js, people["z"].id)
    assert rec["judgements"] == 4 and rec["gold_n"] == 2 and rec["gold_accuracy"] == 0.0
    assert rec["rationale_rate"] == 1.0 and rec["recent"][0]["task_id"] == tasks[3]
    # z sides with a majority of the others on task 0 only (on 1 and 3 the others split, on 2 both differ)
    assert rec["with_majority"] == pytest.approx(1 / 4)


# ------------------------------------------------------------------------------------ migration 0003


def test_migration_0003_keeps_old_rows_working_and_downgrades(store_url):
    """A store at 0002 (before this revision) with an annotator and a project; upgrading gives them
    the defaults that keep them working (active, no forced change, open, no gold); downgrading to
    0002 removes the columns and the table again without touching the rows; upgrading again works."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import inspect, text

    from rlhfkit.feedback.store.engine import MIGRATIONS, make_engine

    engine = make_engine(store_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))

    def migrate(fn, target):
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            fn(cfg, target)

    try:
        migrate(command.upgrade, "0002")
        with engine.begin() as c:
            c.execute(text("INSERT INTO annotators (name, role, password_hash, salt, created_at) "
                           "VALUES ('old', 'annotator', 'x', 'y', CURRENT_TIMESTAMP)"))
            c.execute(text("INSERT INTO projects (name, annotators_per_task, created_at) "
                           "VALUES ('p', 1, CURRENT_TIMESTAMP)"))
        migrate(command.upgrade, "0003")
        with engine.connect() as c:
            row = c.execute(text("SELECT active, must_change_password FROM annotators")).one()
            assert (bool(row[0]), bool(row[1])) == (True, False)
            assert not c.execute(text("SELECT members_only FROM projects")).scalar()
        assert "project_members" in inspect(engine).get_table_names()
        migrate(command.downgrade, "0002")
        assert "project_members" not in inspect(engine).get_table_names()
        assert "active" not in {col["name"] for col in inspect(engine).get_columns("annotators")}
        with engine.connect() as c:
            assert c.execute(text("SELECT name FROM annotators")).scalar() == "old"
        migrate(command.upgrade, "head")
    finally:
        engine.dispose()
    with FeedbackStore(store_url) as s:
        assert s.get_annotator("old").active is True and s.get_project("p").members_only is False
        with pytest.raises(ConflictError):
            s.add_annotator("old", "pw")


def test_the_migrations_build_exactly_the_models_schema(store_url):
    """`upgrade head` on an empty database gives the tables, columns, indices and constraints of
    store/schema.py, on SQLite and PostgreSQL alike: Alembic's autogenerate finds nothing to add."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from rlhfkit.feedback.store import Base

    with FeedbackStore(store_url) as s, s.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
