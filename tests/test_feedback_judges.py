"""`rlhf label judge`: AI judges answering the queue through the store, asked in both orders.

Every expected number is worked out by hand from the judge's definition (see each test). Models are
tiny random Llamas with a hand-built word-level tokenizer, built here; nothing is downloaded. The
OpenAI-compatible server is a thread on 127.0.0.1 that stops when its test ends.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from rlhfkit.config import LabelJudgeConfig, config_from_dict
from rlhfkit.errors import ConfigError
from rlhfkit.feedback.judges import JudgeError, judge_labels, pair_verdict, strength_of
from rlhfkit.feedback.judges.endpoint import RateLimiter, read_preference, retry_after
from rlhfkit.feedback.store import FeedbackStore, StoreError


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def value(text: str) -> int:
    """The quality every test judge reads: the number at the end of a response ("value 5" -> 5)."""
    return int(text.split()[-1])


# Judges as `module:function`: pytest puts tests/ on sys.path, so this module imports by its name.
BIAS = 1.5  # logit added for whatever is shown first


def biased_pairwise(prompts, completions_a, completions_b):
    """P(first better) = sigmoid(v_first - v_second + 1.5): prefers the first position."""
    return [sig(value(a) - value(b) + BIAS) for a, b in zip(completions_a, completions_b)]


def pointwise_value(prompts, completions):
    return [float(value(c)) for c in completions]


def make_store(path: Path, groups: list[tuple[int, ...]], needed: int = 1) -> dict[int, list[int]]:
    """A project 'p' with one task per group of values (responses "value v"); task id -> response ids."""
    tasks = {}
    with FeedbackStore(path) as store:
        store.create_project("p", annotators_per_task=needed)
        for n, vals in enumerate(groups):
            pid = store.add_prompt("p", f"prompt {n}")
            rids = [store.add_response(pid, f"value {v}", "m") for v in vals]
            tasks[store.create_task("p", rids)] = rids
    return tasks


def cfg_for(tmp_path: Path, store: Path, judge: dict, **kw) -> LabelJudgeConfig:
    return config_from_dict(LabelJudgeConfig, {"store": str(store), "project": "p", "judge": judge,
                                               "output_dir": str(tmp_path / "out"), **kw})


def judge_rows(store_path: Path, name: str) -> list[dict]:
    with FeedbackStore(store_path) as store:
        return [j for j in store.judgements("p") if j["annotator"] == name]


def winner_value(j: dict) -> int:
    return value(j["texts"][j["response_ids"].index(j["winner_id"])])


# ---------------------------------------------------------------------------------------------
# both orders, position consistency, verdict policies


def test_pair_verdict_and_strength_by_hand():
    v = pair_verdict(0.8, 0.3)  # both orders prefer A: (0.8 + 0.7) / 2
    assert v.p_first == pytest.approx(0.75) and v.consistent
    v = pair_verdict(0.8, 0.6)  # each order prefers the first shown: inconsistent, (0.8 + 0.4) / 2
    assert v.p_first == pytest.approx(0.6) and not v.consistent
    assert pair_verdict(0.5, 0.5).consistent and not pair_verdict(0.5, 0.4).consistent
    # confidence |2p - 1| against edges 0.2, 0.5, 0.8
    assert [strength_of(p, [0.2, 0.5, 0.8]) for p in (0.55, 0.4, 0.25, 0.95, 0.1)] == [1, 2, 3, 4, 4]


# Pairs of values and, for the biased judge, d = v_x - v_y of the canonical order: the two orders agree
# iff |d| > 1.5. Combined p(x) = (sig(d + 1.5) + sig(d - 1.5)) / 2; the winner is always the higher value.
PAIRS = [(1, 2), (2, 5), (0, 1), (1, 7), (3, 5)]
# (consistent, strength of the higher value's win) by hand:
#   d=-1: p(y) = 1 - (sig(0.5) + sig(-2.5))/2 = 1 - (0.6225 + 0.0759)/2 = 0.6508; inconsistent -> 1
#   d=-3: 1 - (sig(-1.5) + sig(-4.5))/2 = 1 - (0.1824 + 0.0110)/2 = 0.9033; |2p-1| = 0.807 -> 4
#   d=-6: 1 - (0.0110 + 0.0006)/2 = 0.9942 -> 4;  d=-2: 1 - (0.3775 + 0.0293)/2 = 0.7966; 0.593 -> 3
EXPECTED = {(1, 2): (False, 1), (2, 5): (True, 4), (0, 1): (False, 1), (1, 7): (True, 4), (3, 5): (True, 3)}


def test_biased_pairwise_function_both_orders_and_consistency_rate(tmp_path):
    db = tmp_path / "fb.db"
    tasks = make_store(db, PAIRS)
    with FeedbackStore(db) as store:  # gold questions: (2,5) answered right ("B" = 5), (1,2) wrongly
        store.set_gold(list(tasks)[1], choice="B")
        store.set_gold(list(tasks)[0], choice="A")
    cfg = cfg_for(tmp_path, db, {"kind": "function", "function": "test_feedback_judges:biased_pairwise",
                                 "mode": "pairwise"}, name="biased")
    summary = judge_labels(cfg)
    assert summary["gold"] == {"n": 2, "accuracy": 0.5}
    assert summary["pairs_asked_both_orders"] == 5
    assert summary["judgements"] == 5 and summary["questions_asked"] == 10  # 5 pairs x 2 orders
    assert summary["position_consistency"] == pytest.approx(3 / 5)
    # first shown preferred iff d_first + 1.5 > 0: both orders of (1,2) and (0,1), one of each other pair
    assert summary["first_position_preferred"] == pytest.approx(7 / 10)
    rows = judge_rows(db, "biased")
    assert len(rows) == 5
    for j in rows:
        vals = tuple(value(t) for t in j["texts"])
        assert winner_value(j) == max(vals)  # averaging the orders cancels the bias
        assert j["strength"] == EXPECTED[vals][1]
    with FeedbackStore(db) as store:
        me = store.get_annotator("biased")
        assert me.role == "judge" and me.spec["function"] == "test_feedback_judges:biased_pairwise"
        assert me.spec["hash"] == summary["spec_hash"]
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["position_consistency"] == pytest.approx(0.6)
    # a re-run finds nothing left for this judge and asks nothing
    again = judge_labels(cfg)
    assert again["judgements"] == 0 and again["questions_asked"] == 0
    assert again["position_consistency"] == pytest.approx(0.6)  # from the journal: every run's pairs


@pytest.mark.parametrize("policy", ["tie_bad", "skip"])
def test_inconsistent_verdicts_follow_the_policy(tmp_path, policy):
    db = tmp_path / "fb.db"
    make_store(db, PAIRS)
    summary = judge_labels(cfg_for(tmp_path, db, {"kind": "function", "mode": "pairwise",
                                                  "function": "test_feedback_judges:biased_pairwise"},
                                   name="j", inconsistent=policy))
    rows = judge_rows(db, "j")
    inconsistent = [j for j in rows if not EXPECTED[tuple(value(t) for t in j["texts"])][0]]
    if policy == "tie_bad":
        assert len(rows) == 5 and summary["ties"] == 2
        assert [j["choice"] for j in inconsistent] == ["tie_bad", "tie_bad"]
    else:
        assert len(rows) == 3 and inconsistent == [] and summary["skipped"] == {"inconsistent": 2}


def test_rankings_pointwise_by_score_and_pairwise_by_wins(tmp_path):
    db = tmp_path / "fb.db"
    tasks = make_store(db, [(2, 9, 5), (1, 2, 6)], needed=3)  # room for three judges
    by_value = {tid: {value(f"value {v}"): rid for v, rid in zip(vals, rids)}
                for tid, rids, vals in zip(tasks, tasks.values(), [(2, 9, 5), (1, 2, 6)])}
    t1, t2 = list(tasks)
    points = {"kind": "function", "function": "test_feedback_judges:pointwise_value", "mode": "pointwise"}
    judge_labels(cfg_for(tmp_path, db, points, name="points", output_dir=str(tmp_path / "a")))
    rows = {j["task_id"]: j for j in judge_rows(db, "points")}
    v1 = by_value[t1]
    assert rows[t1]["ranking"] == [[v1[9]], [v1[5]], [v1[2]]]
    # pairwise, biased: (1,2) is order-dependent; averaged it goes to 2 (weakest), so wins 6:2, 2:1, 1:0
    fn = {"kind": "function", "function": "test_feedback_judges:biased_pairwise", "mode": "pairwise"}
    judge_labels(cfg_for(tmp_path, db, fn, name="pairs", output_dir=str(tmp_path / "b")))
    rows = {j["task_id"]: j for j in judge_rows(db, "pairs")}
    v2 = by_value[t2]
    assert rows[t2]["ranking"] == [[v2[6]], [v2[2]], [v2[1]]]
    # tie_bad: the order-dependent pair is a draw, 1 and 2 get 0.5 each and share a group
    judge_labels(cfg_for(tmp_path, db, fn, name="pairs-tie", inconsistent="tie_bad",
                         output_dir=str(tmp_path / "c")))
    rows = {j["task_id"]: j for j in judge_rows(db, "pairs-tie")}
    assert rows[t2]["ranking"] == [[v2[6]], sorted([v2[1], v2[2]])]


# ---------------------------------------------------------------------------------------------
# judges as annotators: never log in, one spec per name


def test_judges_never_log_in_and_a_name_keeps_its_spec(tmp_path):
    db = tmp_path / "fb.db"
    make_store(db, [(1, 3)])
    with FeedbackStore(db) as store:
        j = store.add_annotator("robot", "a-good-password", role="judge", spec={"kind": "function"})
        assert store.get_annotator("robot").spec == {"kind": "function"}
        assert store.authenticate("robot", "a-good-password", include_inactive=True) is None
        with pytest.raises(StoreError):
            store.create_session(j.id)
        with pytest.raises(StoreError):  # a spec is only for judges
            store.add_annotator("person", "a-good-password", spec={"kind": "x"})
        store.add_annotator("alice", "a-good-password")
        from fastapi.testclient import TestClient

        from rlhfkit.feedback.app import create_app

        with TestClient(create_app(store.url, secret="test-secret", store=store)) as client:
            login = {"name": "robot", "password": "a-good-password"}
            assert client.post("/api/login", json=login).status_code == 401  # refused like a wrong password
            assert client.post("/login", data=login, follow_redirects=False).status_code == 401
            assert client.post("/api/login", json={**login, "name": "alice"}).status_code == 200
    fn = {"kind": "function", "function": "test_feedback_judges:pointwise_value", "mode": "pointwise"}
    judge_labels(cfg_for(tmp_path, db, fn, name="j1"))
    other = {"kind": "function", "function": "test_feedback_judges:biased_pairwise", "mode": "pairwise"}
    with pytest.raises(ConfigError, match="another spec"):
        judge_labels(cfg_for(tmp_path, db, other, name="j1"))
    with pytest.raises(ConfigError, match="is a person"):
        judge_labels(cfg_for(tmp_path, db, fn, name="alice"))


def test_cli_runs_label_judge(tmp_path, capsys):
    from rlhfkit.cli import main

    db = tmp_path / "fb.db"
    make_store(db, [(4, 1)])
    rc = main(["label", "judge", f"store={db}", "project=p", f"output_dir={tmp_path / 'out'}",
               "judge.kind=function", "judge.function=test_feedback_judges:pointwise_value",
               "judge.mode=pointwise"])
    assert rc == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["judgements"] == 1 and summary["position_consistency"] == 1.0
    # pointwise: p = sig(4 - 1) = 0.9526, |2p - 1| = 0.905 -> strength 4
    assert judge_rows(db, summary["judge"])[0]["strength"] == 4
    rc = main(["label", "judge", f"store={db}", "project=p", "judge.kind=openai", "judge.model=m",
               "judge.base_url=http://127.0.0.1:9/v1", "judge.api_key=sk-secret"])
    assert rc == 2 and "never put an API key in a config file" in capsys.readouterr().err


def test_migration_0004_adds_and_drops_the_spec_column(tmp_path):
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import inspect

    from rlhfkit.feedback.store.engine import MIGRATIONS, make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))

    def migrate(fn, target):
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            fn(cfg, target)

    def columns():
        return {c["name"] for c in inspect(engine).get_columns("annotators")}

    try:
        migrate(command.upgrade, "0003")
        assert "spec" not in columns()
        migrate(command.upgrade, "0004")
        assert "spec" in columns()
        migrate(command.downgrade, "0003")
        assert "spec" not in columns()
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------------------------
# local models: a reward-model directory and a causal LM read at the label logits

WORDS = ["prompt", "value", "which", "better", "|", "?", "A", "B", *[str(i) for i in range(10)]]
SPECIALS = ["<pad>", "<eos>", "<unk>", "<user>", "<assistant>", "<system>"]
CHAT = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} <eos> {% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}")


def tiny_tokenizer(chat: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>",
                                  unk_token="<unk>", additional_special_tokens=SPECIALS[3:])
    if chat:
        tok.chat_template = CHAT
    return tok


def tiny_llama(cls_name: str, tok, out: Path, **extra) -> Path:
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=128, pad_token_id=tok.pad_token_id,
                                      eos_token_id=tok.eos_token_id, bos_token_id=None, **extra)
    model = getattr(transformers, cls_name)(config)
    with torch.no_grad():  # larger weights: a peaked LM and well-spread rewards
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("judge-models")
    rm = tiny_llama("LlamaForSequenceClassification", tiny_tokenizer(False), root / "rm", num_labels=1,
                    reward_offset=0.3, reward_scale=0.5)
    lm = tiny_llama("LlamaForCausalLM", tiny_tokenizer(True), root / "lm")
    return {"rm": rm, "lm": lm}


def journal(tmp_path: Path) -> dict[str, float]:
    lines = (tmp_path / "out" / "judge_journal.jsonl").read_text().splitlines()
    return {row["key"]: row["value"] for row in map(json.loads, lines)}


def test_reward_model_judge_is_bradley_terry_on_normalised_scores(tmp_path, models):
    from rlhfkit.scoring import RewardScorer

    db = tmp_path / "fb.db"
    groups = [(1, 8), (3, 4), (9, 0)]
    tasks = make_store(db, groups)
    summary = judge_labels(cfg_for(tmp_path, db, {"kind": "reward_model", "path": str(models["rm"])},
                                   name="rm"))
    assert summary["judgements"] == 3 and summary["position_consistency"] == 1.0
    scorer = RewardScorer(models["rm"])
    answers = journal(tmp_path)
    rows = {j["task_id"]: j for j in judge_rows(db, "rm")}
    for n, (tid, rids) in enumerate(tasks.items()):
        texts = [f"value {v}" for v in groups[n]]
        raw, _ = scorer.score([f"prompt {n}"] * 2, texts, normalized=False)
        r = (raw - 0.3) / 0.5  # the stored offset and scale are applied
        assert [answers[f"{tid}:{rid}"] for rid in rids] == pytest.approx(r.tolist(), abs=1e-5)
        p_first = sig(r[0] - r[1])  # both orders: (sig(d) + 1 - sig(-d)) / 2 = sig(d)
        assert rows[tid]["winner_id"] == (rids[0] if p_first > 0.5 else rids[1])
        assert rows[tid]["strength"] == strength_of(p_first, [0.2, 0.5, 0.8])


def test_local_lm_judge_reads_the_softmax_of_the_two_label_logits(tmp_path, models):
    db = tmp_path / "fb.db"
    groups = [(1, 2), (3, 4, 5), (7, 0)]  # different lengths: the batch is left-padded
    tasks = make_store(db, groups)
    spec = {"kind": "local_lm", "model": str(models["lm"]), "template": "which better ? {prompt} | "
            "{response_a} | {response_b}", "batch_size": 8}
    summary = judge_labels(cfg_for(tmp_path, db, spec, name="lm"))
    assert summary["judgements"] == 3 and summary["questions_asked"] == 2 + 6 + 2
    tok = tiny_tokenizer(True)
    model = transformers_model(models["lm"])
    a_id, b_id = tok.convert_tokens_to_ids(["A", "B"])
    answers = journal(tmp_path)
    for n, (tid, rids) in enumerate(tasks.items()):
        for i, j in [(i, j) for i in range(len(rids)) for j in range(len(rids)) if i != j]:
            # the chat template by hand: "<user> {content} <eos> <assistant>", one forward pass, no padding
            content = f"which better ? prompt {n} | value {groups[n][i]} | value {groups[n][j]}"
            ids = tok(f"<user> {content} <eos> <assistant>", add_special_tokens=False)["input_ids"]
            assert tok.unk_token_id not in ids
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0, -1]
            want = torch.softmax(logits[[a_id, b_id]], -1)[0].item()
            assert answers[f"{tid}:{rids[i]}-{rids[j]}"] == pytest.approx(want, abs=1e-5)
    # a label that is two tokens for this tokenizer stops the run, naming the key, before any store work
    with pytest.raises(JudgeError, match=r"judge\.labels: 'A B' is 2 tokens"):
        judge_labels(cfg_for(tmp_path, db, {**spec, "labels": ["A B", "B"]}, name="lm2"))
    with FeedbackStore(db) as store:
        assert store.get_annotator("lm2") is None


def transformers_model(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


# ---------------------------------------------------------------------------------------------
# an OpenAI-compatible endpoint: a fake server on 127.0.0.1


class FakeServer:
    """Chat completions answered from the prompt "p|value x|value y": top_logprobs A = log sig(x - y),
    B = log sig(y - x), so P(A) = sig(x - y) exactly. ``failures``: (status, Retry-After) answered
    first, in order, to any request. Stops at the end of the test (and after 60 s whatever happens)."""

    def __init__(self, failures=(), logprobs: bool = True):
        self.failures = list(failures)
        self.logprobs = logprobs
        self.requests = 0
        self.times: list[float] = []
        self.auth: list[str | None] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests += 1
                    server.times.append(time.monotonic())
                    server.auth.append(self.headers.get("Authorization"))
                    failure = server.failures.pop(0) if server.failures else None
                if failure:
                    self.send_response(failure[0])
                    if failure[1] is not None:
                        self.send_header("Retry-After", failure[1])
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                    return
                _, a, b = body["messages"][-1]["content"].split("|")
                d = value(a) - value(b)
                if server.logprobs:
                    top = [{"token": "A", "logprob": math.log(sig(d))},
                           {"token": "B", "logprob": math.log(sig(-d))}]
                    choice = {"message": {"content": "A" if d > 0 else "B"},
                              "logprobs": {"content": [{**top[0 if d > 0 else 1], "top_logprobs": top}]}}
                else:
                    choice = {"message": {"content": "Answer: B" if d < 0 else "A is better"}}
                data = json.dumps({"choices": [choice]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()
        self.timer = threading.Timer(60, self.stop)
        self.timer.daemon = True
        self.timer.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def stop(self):
        self.timer.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake_server():
    servers = []

    def start(**kw):
        servers.append(FakeServer(**kw))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def api_spec(url: str, **kw) -> dict:
    return {"kind": "openai", "base_url": url, "model": "fake", "api_key_env": "FAKE_JUDGE_KEY",
            "template": "{prompt}|{response_a}|{response_b}", "backoff_seconds": 0.01,
            "requests_per_second": 1000, **kw}


def test_endpoint_retries_429_then_500_then_uses_the_answer(tmp_path, fake_server, monkeypatch):
    monkeypatch.setenv("FAKE_JUDGE_KEY", "sk-test")
    server = fake_server(failures=[(429, "1"), (500, None)])
    db = tmp_path / "fb.db"
    tasks = make_store(db, [(2, 5)])
    start = time.monotonic()
    summary = judge_labels(cfg_for(tmp_path, db, api_spec(server.url, concurrency=1), name="api"))
    # 2 questions (both orders); the first took 3 tries: 429, 500, success
    assert server.requests == 4 and summary["requests"] == 4 and summary["retries"] == 2
    assert server.times[1] - server.times[0] >= 1.0  # Retry-After: 1 beat the 0.01 s backoff
    assert time.monotonic() - start >= 1.0
    assert set(server.auth) == {"Bearer sk-test"}  # the key from the environment, as a Bearer token
    # P(2 first) = sig(-3), P(5 first) = sig(3): consistent; p(5) = sig(3) = 0.9526 -> strength 4
    (row,) = judge_rows(db, "api")
    tid, rids = next(iter(tasks.items()))
    assert row["winner_id"] == rids[1] and row["strength"] == 4
    answers = journal(tmp_path)
    assert answers[f"{tid}:{rids[0]}-{rids[1]}"] == pytest.approx(sig(-3))
    assert summary["position_consistency"] == 1.0


class Killed(Exception):
    pass


def test_killed_run_resumes_without_asking_again(tmp_path, fake_server, monkeypatch):
    from rlhfkit.feedback.judges.base import Journal

    monkeypatch.setenv("FAKE_JUDGE_KEY", "sk-test")
    server = fake_server()
    db = tmp_path / "fb.db"
    make_store(db, [(1, 4), (6, 2), (3, 9), (5, 0), (8, 7), (2, 3)])  # 6 tasks, 12 questions
    cfg = cfg_for(tmp_path, db, api_spec(server.url, concurrency=2), name="api")
    add = Journal.add
    written = []

    def dies_after_five(self, q, v, info):
        add(self, q, v, info)
        written.append(q.key)
        if len(written) == 5:
            raise Killed("killed after 5 answers")

    monkeypatch.setattr(Journal, "add", dies_after_five)
    with pytest.raises(Killed):
        judge_labels(cfg)
    monkeypatch.setattr(Journal, "add", add)
    assert len(journal(tmp_path)) == 5 and judge_rows(db, "api") == []
    asked_before = server.requests
    summary = judge_labels(cfg)
    assert server.requests - asked_before == 12 - 5  # every journaled answer reused, nothing asked twice
    assert summary["answers_reused_from_journal"] == 5 and summary["questions_asked"] == 7
    rows = judge_rows(db, "api")
    assert len(rows) == 6 and all(winner_value(j) == max(value(t) for t in j["texts"]) for j in rows)


def test_text_answers_when_the_server_gives_no_logprobs(tmp_path, fake_server, monkeypatch):
    monkeypatch.setenv("FAKE_JUDGE_KEY", "sk-test")
    server = fake_server(logprobs=False)
    db = tmp_path / "fb.db"
    make_store(db, [(2, 5)])
    judge_labels(cfg_for(tmp_path, db, api_spec(server.url), name="api"))
    (row,) = judge_rows(db, "api")
    assert winner_value(row) == 5 and row["strength"] == 4  # P = 0 / 1 from the text: p(5) = 1


def test_read_preference_by_hand():
    lp = {"choices": [{"message": {"content": "A"}, "logprobs": {"content": [{
        "token": "A", "logprob": math.log(0.5),
        "top_logprobs": [{"token": "A", "logprob": math.log(0.5)},
                         {"token": " A", "logprob": math.log(0.1)},
                         {"token": "B", "logprob": math.log(0.2)},
                         {"token": "C", "logprob": math.log(0.2)}]}]}}]}
    p, info = read_preference(lp, ["A", "B"])
    assert p == pytest.approx(0.6 / 0.8) and info["source"] == "logprobs"  # "A" and " A" summed, C ignored
    only_b = {"choices": [{"logprobs": {"content": [{"token": "B", "logprob": -0.1, "top_logprobs": []}]}}]}
    assert read_preference(only_b, ["A", "B"])[0] == 0.0
    assert read_preference({"choices": [{"message": {"content": "I pick B, not A"}}]}, ["A", "B"])[0] == 0.0
    p, info = read_preference({"choices": [{"message": {"content": "Both are fine"}}]}, ["A", "B"])
    assert p is None and "neither label" in info["error"]
    assert retry_after("2") == 2.0 and retry_after(None) == 0.0 and retry_after("soon") == 0.0


def test_rate_limiter_spaces_calls():
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    limiter = RateLimiter(4.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        limiter.wait()
    assert slept == pytest.approx([0.25, 0.25])  # 4 per second: slots 0, 0.25, 0.5


def test_endpoint_errors_name_the_field_and_keep_the_summary(tmp_path, monkeypatch):
    import socket

    db = tmp_path / "fb.db"
    make_store(db, [(1, 2)])
    monkeypatch.delenv("FAKE_JUDGE_KEY", raising=False)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(JudgeError, match=r"judge\.api_key_env: the environment variable FAKE_JUDGE_KEY"):
        judge_labels(cfg_for(tmp_path, db, api_spec(url), name="api"))
    monkeypatch.setenv("FAKE_JUDGE_KEY", "sk-test")
    with pytest.raises(JudgeError, match=r"judge\.base_url: no answer from .* after 2 attempts"):
        judge_labels(cfg_for(tmp_path, db, api_spec(url, max_retries=1), name="api"))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["status"].startswith("stopped: JudgeError") and summary["judgements"] == 0
    assert re.search("sk-test", (tmp_path / "out" / "config.yaml").read_text()) is None
