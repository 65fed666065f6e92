"""Labelling content: conversational prompts (store, `rlhf collect`, export in TRL's conversational
preference format and training on it), opaque per-task response handles, revising a judgement
(history kept, export reads the latest), and a refused form post keeping what was entered.

Tests taking ``store_url`` run on SQLite and on the throwaway PostgreSQL cluster (conftest.py)."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from rlhfkit.config import CollectConfig, LabelExportConfig
from rlhfkit.errors import DataError
from rlhfkit.feedback.app import create_app
from rlhfkit.feedback.collect import collect
from rlhfkit.feedback.export import export, export_rows
from rlhfkit.feedback.store import (ConflictError, FeedbackStore, ForbiddenError, Judgement, NotFoundError,
                                    StoreError)

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "review of the film :"}]


@pytest.fixture
def store(store_url):
    s = FeedbackStore(store_url)
    s.create_project("p")
    yield s
    s.close()


def _task(store, prompt, texts=("it was good .", "it was bad ."), project="p") -> tuple[int, list[int]]:
    pid = store.add_prompt(project, prompt)
    ids = [store.add_response(pid, t, f"m{k}") for k, t in enumerate(texts)]
    return store.create_task(project, ids), ids


# ---------------------------------------------------------------------------------------------
# conversations in the store


def test_conversation_prompts_are_checked_deduplicated_and_served(store):
    pid = store.add_prompt("p", CHAT)
    assert store.add_prompt("p", [dict(m) for m in CHAT]) == pid  # same conversation: same prompt
    assert store.add_prompt("p", CHAT[1:]) != pid
    # the transcript as a string prompt is another prompt, not the conversation
    assert store.add_prompt("p", "system: Be brief.\n\nuser: review of the film :") != pid
    bad = [
        ([], "non-empty list"),
        ([*CHAT, {"role": "assistant", "content": "hi"}], "the assistant's next turn"),
        ([{"role": "wizard", "content": "x"}], "role 'wizard'"),
        ([{"role": "user", "content": 3}], "needs text content"),
        ([{"role": "user", "content": "  "}], "blank"),
        (["just a string"], "must be an object"),
    ]
    for messages, match in bad:
        with pytest.raises(StoreError, match=match) as e:
            store.add_prompt("p", messages)
        assert e.value.field == "prompt"
    ids = [store.add_response(pid, t, m) for t, m in (("A **bold** answer", "m1"), ("Another", "m2"))]
    t = store.create_task("p", ids)
    a = store.add_annotator("ann", "pw-ann")
    view = store.next_task("p", a.id)
    assert view.id == t and list(view.messages) == CHAT and view.prompt.endswith("user: review of the film :")
    (task,) = store.tasks("p")
    assert task["messages"] == CHAT


# ---------------------------------------------------------------------------------------------
# opaque response handles


def test_response_handles_are_random_per_task_and_the_only_ids_opaque_submits_take(store):
    t1, ids = _task(store, "q1", texts=("x one", "x two", "x three"))
    t2 = store.create_task("p", ids[:2])  # the same two responses in another task
    tasks = {t["task_id"]: t for t in store.tasks("p")}
    h1, h2 = tasks[t1]["handles"], tasks[t2]["handles"]
    assert all(re.fullmatch(r"[0-9a-f]{16}", h) for h in h1 + h2)
    assert len(set(h1)) == 3 and not set(h1) & set(h2)  # per task: a handle says nothing across tasks
    assert not {str(i) for i in ids} & set(h1)
    a = store.add_annotator("ann", "pw-ann")
    view = store.next_task("p", a.id)
    assert view.id == t1 and dict(zip(view.handles, (i for i, _ in view.responses))) == \
        dict(zip(h1, tasks[t1]["response_ids"]))
    shown = list(view.handles)
    # response ids, or another task's handles, are refused on the opaque path, naming the field
    for order, field in (([i for i, _ in view.responses], "displayed_order"),
                         ([h2[0], *shown[1:]], "displayed_order")):
        with pytest.raises(StoreError) as e:
            store.submit(t1, a.id, ranking=[[shown[0]], shown[1:]], displayed_order=order, opaque=True)
        assert e.value.field == field and "is not a response of task" in str(e.value)
    with pytest.raises(StoreError, match="is not a response of task") as e:
        store.submit(t1, a.id, ranking=[[ids[0]], shown[1:]], displayed_order=shown, opaque=True)
    assert e.value.field == "ranking"
    store.submit(t1, a.id, ranking=[[shown[2]], [shown[0], shown[1]]], displayed_order=shown, opaque=True)
    (j,) = store.judgements("p")
    by_handle = dict(zip(view.handles, (i for i, _ in view.responses)))
    assert j["ranking"] == [[by_handle[shown[2]]], sorted([by_handle[shown[0]], by_handle[shown[1]]])]


def test_migration_0002_gives_existing_tasks_handles_and_downgrades(tmp_path):
    from alembic import command
    from alembic.config import Config

    from rlhfkit.feedback.store.engine import MIGRATIONS, make_engine

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.exec_driver_sql("INSERT INTO projects (id, name, annotators_per_task, created_at) "
                             "VALUES (1, 'old', 1, '2025-01-01')")
        conn.exec_driver_sql("INSERT INTO prompts (id, project_id, text, text_hash, created_at) "
                             "VALUES (1, 1, 'q', 'h', '2025-01-01')")
        for rid in (1, 2, 3):
            conn.exec_driver_sql(f"INSERT INTO responses (id, prompt_id, text, text_hash, model_id, "
                                 f"created_at) VALUES ({rid}, 1, 'r{rid}', 'h{rid}', 'm', '2025-01-01')")
        conn.exec_driver_sql("INSERT INTO tasks (id, project_id, prompt_id, kind, annotators_needed, "
                             "calibration, created_at) VALUES (1, 1, 1, 'ranking', 1, 0, '2025-01-01')")
        for pos, rid in enumerate((3, 1, 2)):
            conn.exec_driver_sql(f"INSERT INTO task_responses (task_id, position, response_id) "
                                 f"VALUES (1, {pos}, {rid})")
    engine.dispose()
    with FeedbackStore(url) as s:  # opening upgrades to head
        (t,) = s.tasks("old")
        assert t["response_ids"] == [3, 1, 2] and len(set(t["handles"])) == 3
        assert all(re.fullmatch(r"[0-9a-f]{16}", h) for h in t["handles"])
        assert t["messages"] is None
    engine = make_engine(url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0001")
        cols = {r[1] for r in conn.exec_driver_sql("PRAGMA table_info(task_responses)")}
        assert "handle" not in cols
        assert conn.exec_driver_sql("SELECT count(*) FROM task_responses").scalar() == 3
    engine.dispose()


# ---------------------------------------------------------------------------------------------
# revisions


def test_revision_keeps_the_history_and_export_reads_the_latest(store):
    t, ids = _task(store, "how was it ?")
    a = store.add_annotator("ann", "pw-ann")
    view = store.next_task("p", a.id)
    shown = list(view.handles)
    jid = store.submit(t, a.id, choice="A", strength=1, rationale="first look", seconds=2.0,
                       displayed_order=shown, opaque=True)
    last = store.last_judgement("p", a.id)
    assert last.id == t and last.revision_of == jid and list(last.handles) == shown
    assert last.answer == {"choice": "A", "strength": 1, "rationale": "first look", "ranks": {}}
    # the same answer again stores no revision; a different one does, and the row is the latest
    assert store.revise(t, a.id, choice="A", strength=1, rationale="first look", displayed_order=shown,
                        opaque=True) == jid
    assert store.judgements("p")[0]["revision"] == 1
    assert store.revise(t, a.id, choice="B", strength=3, rationale="on second thought", seconds=1.5,
                        displayed_order=shown, opaque=True) == jid
    store.revise(t, a.id, choice="tie_bad", displayed_order=shown, opaque=True)
    (j,) = store.judgements("p")
    assert j["revision"] == 3 and j["choice"] == "tie_bad" and j["rationale"] is None
    assert j["seconds"] == 3.5  # time on the task adds up over revisions
    history = store.judgement_history(jid)
    assert [h["revision"] for h in history] == [1, 2, 3]
    assert [(h["position_chosen"], h["strength"], h["rationale"]) for h in history] == \
        [(0, 1, "first look"), (1, 3, "on second thought"), (None, None, None)]
    assert history[-1]["replaced_at"] is None and all(h["replaced_at"] for h in history[:2])
    assert store.last_judgement("p", a.id).answer["choice"] == "tie_bad"
    # export uses the latest answer: a tie, dropped by default, kept as a tie on request
    rows, stats = export_rows(store, "p")
    assert rows == [] and stats["ties_dropped"] == 1
    kept, _ = export_rows(store, "p", ties="keep")
    assert len(kept) == 1 and kept[0]["tie_kind"] == "tie_bad"


def test_revision_is_only_for_your_own_recent_judgement_in_its_order(store):
    t, ids = _task(store, "q")
    a, b = store.add_annotator("ann", "pw-ann"), store.add_annotator("bob", "pw-bob")
    assert store.last_judgement("p", a.id) is None
    shown = list(store.next_task("p", a.id).handles)
    with pytest.raises(NotFoundError, match="no judgement of yours"):
        store.revise(t, a.id, choice="A", displayed_order=shown, opaque=True)
    store.submit(t, a.id, choice="A", displayed_order=shown, opaque=True)
    with pytest.raises(NotFoundError, match="no judgement of yours"):
        store.revise(t, b.id, choice="B", displayed_order=shown, opaque=True)
    with pytest.raises(StoreError, match="order this judgement was made in") as e:
        store.revise(t, a.id, choice="B", displayed_order=shown[::-1], opaque=True)
    assert e.value.field == "displayed_order"
    with pytest.raises(StoreError) as e:
        store.revise(t, a.id, choice="C", displayed_order=shown, opaque=True)
    assert e.value.field == "choice"
    other = store.create_project("q")
    with pytest.raises(NotFoundError, match="not in project 'q'"):
        store.revise(t, a.id, choice="B", displayed_order=shown, opaque=True, project=other.name)
    # a deactivated account revises nothing
    store.set_active(a.id, False)
    with pytest.raises(ForbiddenError, match="deactivated"):
        store.revise(t, a.id, choice="B", displayed_order=shown, opaque=True)
    with pytest.raises(ForbiddenError, match="deactivated"):
        store.last_judgement("p", a.id)
    store.set_active(a.id, True)
    # the window is the lease, counted from the first answer: once it has passed, no revision
    with store._session.begin() as s:
        for j in s.scalars(select(Judgement)):
            j.created_at -= store.lease + timedelta(seconds=1)
    assert store.last_judgement("p", a.id) is None
    with pytest.raises(ConflictError, match="can no longer be revised"):
        store.revise(t, a.id, choice="B", displayed_order=shown, opaque=True)
    assert store.judgements("p")[0]["revision"] == 1


# ---------------------------------------------------------------------------------------------
# the web page and API


def test_label_page_revise_and_refused_posts_keep_the_input(tmp_path):
    store = FeedbackStore(str(tmp_path / "fb.db"))
    store.create_project("p")
    t1, _ = _task(store, CHAT, texts=("**A** first", "`B` second", "C third"))
    t2, _ = _task(store, "a plain prompt")
    store.add_annotator("alice", "alice-pw")
    with TestClient(create_app(store.url, secret="s", store=store)) as client:
        r = client.post("/login", data={"name": "alice", "password": "alice-pw"}, follow_redirects=False)
        assert r.status_code == 303
        nothing = client.get("/projects/p/label?revise=1")  # U before any judgement: said so, queue as usual
        assert nothing.status_code == 200 and "Nothing to revise" in nothing.text
        assert 'id="revising"' not in nothing.text and f'name="task_id" value="{t1}"' in nothing.text
        html = client.get("/projects/p/label").text
        assert 'id="conversation"' in html and "<strong>A</strong> first" in html and "<code>B</code>" in html
        order = re.search(r'name="displayed_order" value="([0-9a-f,]+)"', html).group(1)
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', html).group(1)
        hs = order.split(",")
        assert not any(f'name="rank_{i}"' in html for i in range(1, 6))  # no response id in the form
        # everything tied is refused by the store: the page comes back with the ranks and rationale
        form = {"task_id": t1, "displayed_order": order, "action": "submit", "csrf": csrf,
                "rationale": "all <equal> to me", **{f"rank_{h}": "1" for h in hs}}
        r = client.post("/projects/p/label", data=form)
        assert r.status_code == 400 and "everything tied" in r.text
        assert r.text.count('<option value="1" selected>') == 3
        assert "all &lt;equal&gt; to me</textarea>" in r.text
        form.update({f"rank_{hs[0]}": "2", f"rank_{hs[2]}": "3"})
        assert client.post("/projects/p/label", data=form, follow_redirects=False).status_code == 303
        # U: the page reopens the judgement with its ranks; a changed ranking is saved as a revision
        page = client.get("/projects/p/label?revise=1").text
        assert 'id="revising"' in page and f'name="task_id" value="{t1}"' in page
        assert 'name="revise" value="1"' in page and 'id="skip"' not in page
        assert f'<select name="rank_{hs[0]}" id="rank-A">' in page
        r = client.post("/projects/p/label", data={**form, "revise": "1", f"rank_{hs[0]}": "3",
                                                   f"rank_{hs[2]}": "2"}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].endswith("saved=revised")
        # the API: handles, the last judgement with its answer, a revision
        token = client.post("/api/login", json={"name": "alice", "password": "alice-pw"}).json()["token"]
        h = {"Authorization": f"Bearer {token}"}
        nxt = client.get("/api/projects/p/next", headers=h).json()["task"]
        assert nxt["id"] == t2 and nxt["messages"] is None
        assert all(re.fullmatch(r"[0-9a-f]{16}", x["id"]) for x in nxt["responses"])
        last = client.get("/api/projects/p/last", headers=h).json()["task"]
        assert last["id"] == t1 and last["messages"] == CHAT and last["answer"]["ranks"] == \
            {hs[0]: 3, hs[1]: 1, hs[2]: 2}
        r = client.post(f"/api/tasks/{t1}/revision", headers=h,
                        json={"ranking": [[hs[0]], [hs[1], hs[2]]], "displayed_order": hs})
        assert r.status_code == 200, r.text
        r = client.post(f"/api/tasks/{t1}/revision", headers=h, json={"ranking": [[1], [2, 3]],
                                                                      "displayed_order": [1, 2, 3]})
        assert r.status_code == 422 and "displayed_order" in r.text
    (j,) = store.judgements("p")
    assert j["revision"] == 3 and len(store.judgement_history(j["judgement_id"])) == 3
    store.close()


# ---------------------------------------------------------------------------------------------
# collect and export


def judge_all(store, project: str, annotator, prefer: str) -> None:
    """Judge every task the queue offers ``annotator``: the response containing ``prefer`` wins."""
    while (view := store.next_task(project, annotator.id)) is not None:
        shown = [rid for rid, _ in view.responses]
        choice = "A" if prefer in view.responses[0][1] else "B"
        store.submit(view.id, annotator.id, choice=choice, strength=2, displayed_order=shown)


def _chat_rows(n: int = 4) -> list[dict]:
    rows = []
    for p in range(n):
        prompt = [{"role": "user", "content": f"review of the film {p} :"},
                  {"role": "assistant", "content": "which part ?"}, {"role": "user", "content": "the end ."}]
        for k in range(2):
            reply = f"it was {'good' if k else 'bad'} {p} ."
            rows.append({"prompt": prompt, "model_id": f"m{k}",
                         "response": reply if k else [{"role": "assistant", "content": reply}]})
    return rows


def test_collect_imports_conversations_idempotently_and_names_bad_rows(tmp_path):
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _chat_rows()))
    cfg = CollectConfig(store=str(tmp_path / "fb.db"), project="c", responses=str(data), pairs_per_prompt=1,
                        output_dir=str(tmp_path / "out"))
    first = collect(cfg)
    assert (first["prompts_added"], first["responses_added"], first["tasks_created"]) == (4, 8, 4)
    again = collect(cfg)
    assert (again["prompts_added"], again["responses_added"], again["tasks_created"]) == (0, 0, 0)
    with FeedbackStore(cfg.store) as s:
        tasks = s.tasks("c")
    assert all(t["messages"][-1] == {"role": "user", "content": "the end ."} for t in tasks)
    assert sorted(t for task in tasks for t in task["texts"])[:2] == ["it was bad 0 .", "it was bad 1 ."]
    bad = _chat_rows(1)
    bad[1]["prompt"] = bad[1]["prompt"][:2]  # ends with the assistant
    data.write_text("".join(json.dumps(r) + "\n" for r in bad))
    with pytest.raises(DataError, match="must end with the user") as e:
        collect(cfg)
    assert e.value.row == 2 and e.value.field == "prompt"


@pytest.fixture
def chat_export(tmp_path):
    """Four conversational pair tasks, each judged once (the second response of each wins)."""
    s = FeedbackStore(tmp_path / "fb.db")
    s.create_project("c")
    for row in _chat_rows()[::2]:
        pid = s.add_prompt("c", row["prompt"])
        s.create_task("c", [s.add_response(pid, f"it was {w} {row['prompt'][0]['content'][-3]} .", f"m{k}")
                            for k, w in enumerate(("bad", "good"))])
    judge_all(s, "c", s.add_annotator("ann", "pw-ann"), "good")
    yield s
    s.close()


def test_export_writes_trls_conversational_preference_format(chat_export, tmp_path):
    from rlhfkit.data.formats import normalize
    from rlhfkit.data.loading import read_records

    rows, stats = export_rows(chat_export, "c")
    assert len(rows) == 4 and stats["conversational_rows"] == 4
    r = rows[0]
    assert r["prompt"][0] == {"role": "user", "content": "review of the film 0 :"} and len(r["prompt"]) == 3
    assert r["chosen"] == [{"role": "assistant", "content": "it was good 0 ."}]
    assert r["rejected"] == [{"role": "assistant", "content": "it was bad 0 ."}]
    out = export(LabelExportConfig(store=chat_export.url, project="c", output=str(tmp_path / "c.jsonl")))
    got, _ = normalize(read_records(out), "preference", source=str(out),
                       render_chat=lambda msgs, gen: "".join(f"<{m['role']}>{m['content']}" for m in msgs)
                       + ("<assistant>" if gen else ""))
    assert got[0]["prompt"].endswith("<user>the end .<assistant>") and got[0]["chosen"] == "it was good 0 ."
    # a string prompt in the same project becomes a one-message conversation: one format per file
    pid = chat_export.add_prompt("c", "a plain prompt")
    ids = [chat_export.add_response(pid, t, m) for t, m in (("yes", "m0"), ("no", "m1"))]
    chat_export.create_task("c", ids)
    judge_all(chat_export, "c", chat_export.get_annotator("ann"), "yes")
    rows, stats = export_rows(chat_export, "c")
    assert stats["string_prompts_as_chat"] == 1
    assert rows[-1]["prompt"] == [{"role": "user", "content": "a plain prompt"}]
    assert rows[-1]["chosen"] == [{"role": "assistant", "content": "yes"}]
    ds_dir = export(LabelExportConfig(store=chat_export.url, project="c", output=str(tmp_path / "c_ds")))
    assert len(read_records(ds_dir)) == 5
    with pytest.raises(DataError, match="rankings=pairs"):
        export_rows(chat_export, "c", rankings="ranking")


@pytest.mark.slow
def test_exported_conversations_train_a_reward_model_and_feed_dpo(chat_export, world, tmp_path):
    from rlhfkit.config import DPOConfig, RewardConfig
    from rlhfkit.modeling import chat_renderer, load_tokenizer
    from rlhfkit.train.data import load_split
    from rlhfkit.train.reward import train as reward_train

    data = export(LabelExportConfig(store=chat_export.url, project="c", output=str(tmp_path / "c.jsonl")))
    base = str(world / "base")
    rm = reward_train(RewardConfig(model=base, data=str(data), output_dir=str(tmp_path / "rm"), max_steps=2,
                                   per_device_batch_size=2, max_length=96, eval_fraction=0.0,
                                   normalize="none", use_margin=True, learning_rate=1e-3, seed=0))
    assert (Path(rm) / "config.json").exists()
    tok = load_tokenizer(base)
    cfg = DPOConfig(model=base, data=str(data), eval_fraction=0.0)
    rows, _, _ = load_split(cfg, "pairs", render_chat=chat_renderer(tok))
    assert len(rows) == 4
    assert rows[0]["prompt"].endswith("<|user|> the end .\n<|assistant|>")
    assert rows[0]["chosen"].strip() == "it was good 0 ." and rows[0]["rejected"].strip() == "it was bad 0 ."


def test_side_by_side_diff_marks_the_words_escapes_and_stays_fast():
    import random
    import time

    from rlhfkit.feedback.web.diff import side_by_side

    d = side_by_side("one two three.\n\nkeep <b>", "one two THREE.\n\nkeep <b>\n<script>x</script>")
    assert [(str(r.left), str(r.right), r.kind) for r in d.rows] == [
        ("one two <del>three</del>.", "one two <ins>THREE</ins>.", "changed"), ("", "", "same"),
        ("keep &lt;b&gt;", "keep &lt;b&gt;", "same"),
        ("", "<ins>&lt;script&gt;x&lt;/script&gt;</ins>", "added")]
    assert 0.5 < d.similarity < 0.8 and not d.near_identical
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefgh") for _ in range(5)) for _ in range(3000)]
    text = " ".join(words)[:19_000]  # one long paragraph, the slow case for difflib
    start = time.perf_counter()
    near = side_by_side(text, text.replace(words[7], "CHANGED"))
    unlike = side_by_side(text, " ".join(rng.sample(words, len(words)))[:19_000])
    assert time.perf_counter() - start < 5  # about 0.1 s; difflib's own ratio takes tens of seconds
    assert near.near_identical and "<ins>CHANGED</ins>" in str(near.rows[0].right)
    assert unlike.similarity < 0.2
    assert side_by_side("x" * 30_000, "y" * 30_000) is None  # too long to diff: no diff offered


@pytest.mark.slow
def test_collect_samples_the_assistants_next_turn_of_conversations(world, tmp_path):
    from rlhfkit.errors import ConfigError
    from rlhfkit.feedback.collect import _prompt_key, _prompt_texts

    chats = [[{"role": "user", "content": f"review of the film {k} :"}] for k in range(3)]
    prompts = tmp_path / "chats.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": c}) + "\n" for c in chats))
    cfg = CollectConfig(store=str(tmp_path / "fb.db"), project="s", prompts=str(prompts),
                        models=[str(world / "base")], num_samples=3, max_new_tokens=8, temperature=1.0,
                        pairs_per_prompt=1, seed=0, output_dir=str(tmp_path / "out"))
    summary = collect(cfg)
    assert summary["prompts_added"] == 3 and summary["tasks_created"] >= 1
    with FeedbackStore(cfg.store) as s:
        tasks = s.tasks("s")
    assert tasks and all(t["messages"] in chats for t in tasks)
    assert collect(cfg)["tasks_created"] == 0  # the same conversations again: nothing new
    # a model without a chat template cannot continue a conversation: a clear error, not a guess
    with pytest.raises(ConfigError, match="has no chat template"):
        _prompt_texts([_prompt_key(chats[0])], None, "some/model")
    texts = _prompt_texts([_prompt_key(chats[0]), "plain"], lambda m, gen: f"<{m[0]['content']}|{gen}>", "m")
    assert list(texts.values()) == ["<review of the film 0 :|True>", "plain"]


def test_prompts_and_responses_keep_their_line_breaks_guidelines_are_plain_markdown():
    from rlhfkit.feedback.web.markdown import render_markdown

    assert str(render_markdown("roses are red\nviolets <i>blue</i>", breaks=True)) == \
        "<p>roses are red<br>\nviolets &lt;i&gt;blue&lt;/i&gt;</p>\n"
    assert "<br>" not in str(render_markdown("a hard-wrapped\nguideline paragraph"))
