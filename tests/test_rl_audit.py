"""The human audit queue during RL (rlhfkit/rl/audit.py): the suspicion ranking on hand-made samples,
an audit round's tasks in a SQLite store, simulated answers and the agreement figure by hand, the
config's strictness, and `audit_alarm: stop` ending a tiny PPO run cleanly."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rlhfkit.config import PPOConfig, config_from_dict
from rlhfkit.config.rl import AuditConfig
from rlhfkit.errors import ConfigError
from rlhfkit.feedback.store import FeedbackStore
from rlhfkit.rl.audit import (AuditQueue, audit_agreement, batch_similarity, louder, select_suspicious,
                              suspicion_scores)
from rlhfkit.train.common import read_metrics

pytestmark = [pytest.mark.xdist_group("ppo"), pytest.mark.usefixtures("one_thread")]

ONE_PROCESS = SimpleNamespace(num_processes=1, is_main_process=True)


# ---------------------------------------------------------------------------------------------
# selection


def test_batch_similarity_by_hand():
    # bigrams: {12, 23}, {12, 23}, {45, 56}, {12, 29}: pairs 0-1 = 1, 0-3 = 1/3, 1-3 = 1/3, others 0
    sim = batch_similarity([[1, 2, 3], [1, 2, 3], [4, 5, 6], [1, 2, 9]])
    assert sim == pytest.approx([(1 + 0 + 1 / 3) / 3, (1 + 0 + 1 / 3) / 3, 0.0, (1 / 3 + 1 / 3) / 3])


def test_selection_ranks_hand_made_samples_as_documented():
    flat = [0.0, 0.0, 0.0, 0.0]
    # Proxy alone: highest first.
    assert select_suspicious(suspicion_scores([0, 3, 1, 2], flat, flat), 4) == [1, 3, 2, 0]
    # Gap: rows 0 and 1 share the top proxy, but the gold judge likes row 1 least.
    # z(proxy) = [1, 1, -1, -1]; z(gold) = [sqrt2, -sqrt2, 0, 0]; score = 2 z(proxy) - z(gold)
    # = [2 - 1.414, 2 + 1.414, -2, -2]: row 1 first, then 0, then the tie 2, 3 in row order.
    s = suspicion_scores([2, 2, 0, 0], flat, flat, gold=[2, -2, 0, 0])
    assert s == pytest.approx([2 - 2 ** 0.5, 2 + 2 ** 0.5, -2, -2])
    assert select_suspicious(s, 3) == [1, 0, 2]
    # Equal proxy: length (w 0.5) and similarity (w 0.5) decide; the longest, least diverse first.
    s = suspicion_scores([1, 1, 1, 1], [10, 40, 10, 10], [0.1, 0.1, 0.9, 0.1])
    assert select_suspicious(s, 2) == [1, 2] and s[1] == pytest.approx(s[2])
    # Weights: length alone; a constant signal contributes nothing.
    w = {"proxy": 0.0, "gap": 0.0, "length": 1.0, "similarity": 0.0}
    assert select_suspicious(suspicion_scores([5, 0, 9, 1], [3, 8, 1, 2], flat, weights=w), 4) == [1, 0, 3, 2]
    assert suspicion_scores([1, 1], [2, 2], [0, 0]) == pytest.approx([0, 0])


def test_agreement_by_hand_and_alarm_priority():
    policy_of = {10: 101, 11: 111, 12: 121}
    js = [{"task_id": 10, "choice": "A", "winner_id": 101},      # preferred the policy sample: 1
          {"task_id": 11, "choice": "B", "winner_id": 112},      # the reference: 0
          {"task_id": 12, "choice": "tie_bad", "winner_id": None},  # a tie: 1/2
          {"task_id": 10, "choice": "B", "winner_id": 101},      # a second annotator, policy: 1
          {"task_id": 99, "choice": "A", "winner_id": 5}]        # not an audit task of this run
    assert audit_agreement(js, policy_of) == (pytest.approx(2.5 / 4), 4)
    assert audit_agreement(js, {}) == (None, 0)
    warn, stop = {"action": "warn", "kind": "kl"}, {"action": "stop", "kind": "audit"}
    assert louder(None, warn) is warn and louder(stop, warn) is stop and louder(warn, stop) is stop
    assert louder(warn, None) is warn


# ---------------------------------------------------------------------------------------------
# a round in a SQLite store


def _rollout(prompts: list[str], texts: list[str]) -> SimpleNamespace:
    ids = [[hash(w) % 997 for w in t.split()] for t in texts]
    return SimpleNamespace(prompts=prompts, texts=texts, response_ids=ids,
                           response_lengths=torch.tensor([len(i) + 1 for i in ids]))


@pytest.fixture
def judge_module(monkeypatch):
    """A judge the simulated annotators use: scores a text by its number of words 'good'."""
    mod = types.ModuleType("audit_fake_judge")
    mod.score = lambda prompts, completions, **kw: [float(c.split().count("good")) for c in completions]
    monkeypatch.setitem(sys.modules, "audit_fake_judge", mod)
    return "audit_fake_judge:score"


def test_round_makes_k_policy_vs_reference_pairs_and_the_simulated_agreement(tmp_path, judge_module):
    db = tmp_path / "audit.db"
    cfg = AuditConfig(store=str(db), project="audit-demo", every=5, k=3, min_answers=3,
                      weights={"proxy": 1.0, "gap": 0.0, "length": 0.0, "similarity": 0.0},
                      simulate={"reward": judge_module, "temperature": 0.0})
    prompts = [f"prompt {i}" for i in range(6)]
    texts = ["good good good", "bad answer", "good good", "meh", "good", "plain words"]
    proxy = [5.0, 0.0, 4.0, 1.0, 3.0, 2.0]  # suspicion order: rows 0, 2, 4, 5, 3, 1
    # Reference answers by row; row 2's equals the policy's, so it cannot be compared and row 5 replaces it.
    refs = {0: "good good good good", 2: "good good", 4: "nothing", 5: "good plain", 3: "x", 1: "y"}
    asked = []

    def sample_reference(rows):
        asked.append(list(rows))
        return [refs[i] for i in rows]

    q = AuditQueue(cfg, seed=0)
    m = q.round(ONE_PROCESS, 5, _rollout(prompts, texts), proxy, None, sample_reference, {"temperature": 0.7})
    assert asked == [[0, 2, 4, 5, 3, 1]]  # 2k spares, most suspicious first
    with FeedbackStore(db) as store:
        tasks = store.tasks("audit-demo")
        assert len(tasks) == 3
        by_prompt = {t["prompt"]: t for t in tasks}
        assert sorted(by_prompt) == ["prompt 0", "prompt 4", "prompt 5"]
        for t in tasks:
            i = int(t["prompt"].split()[1])
            roles = dict(zip(t["model_ids"], t["texts"]))
            assert roles == {"audit-step-5/policy": texts[i], "audit-step-5/reference": refs[i]}
            assert t["kind"] == "pair" and t["annotators_needed"] == 1
        # Judge by hand (temperature 0: the text with more "good" wins): prompt 0 reference (4 > 3),
        # prompt 4 policy (1 > 0), prompt 5 reference (1 > 0) -> agreement 1/3.
        js = store.judgements("audit-demo")
        assert len(js) == 3 and {j["annotator"] for j in js} == {"audit-sim-1"}
        winners = {j["prompt"]: j["model_ids"][j["response_ids"].index(j["winner_id"])] for j in js}
        assert winners == {"prompt 0": "audit-step-5/reference", "prompt 4": "audit-step-5/policy",
                           "prompt 5": "audit-step-5/reference"}
    assert m["audit_round"] == 1 and m["audit_pairs"] == 3
    assert m["audit_agreement"] == pytest.approx(1 / 3) and m["audit_n"] == 3
    assert m["audit_agreement_step"] == 5
    assert m["audit_proxy"] == pytest.approx((5 + 3 + 2) / 3)
    alarm = q.alarm(dict(m), 5, "stop", 0.5)
    assert alarm["kind"] == "audit" and alarm["agreement"] == pytest.approx(1 / 3) and alarm["n"] == 3
    assert q.alarm(dict(m), 5, "stop", 0.3) is None and q.alarm(dict(m), 5, "off", 0.5) is None
    assert AuditQueue(cfg.model_copy(update={"min_answers": 4})).alarm(dict(m), 5, "stop", 0.5) is None

    # Re-sending the same round (a resumed run) adds no task and no judgement.
    state = json.loads(json.dumps(q.rounds))
    again = AuditQueue(cfg, state, seed=0)
    again.round(ONE_PROCESS, 5, _rollout(prompts, texts), proxy, None, sample_reference, {})
    with FeedbackStore(db) as store:
        assert len(store.tasks("audit-demo")) == 3 and len(store.judgements("audit-demo")) == 3
    assert again.rounds == q.rounds


def test_unanswered_rounds_are_read_later(tmp_path):
    """Without `simulate` nobody answers at once; a later round reads what people gave meanwhile."""
    db = tmp_path / "audit.db"
    cfg = AuditConfig(store=str(db), project="people", every=2, k=2)
    q = AuditQueue(cfg)
    ro = _rollout(["p1", "p2"], ["alpha beta", "gamma delta"])
    m = q.round(ONE_PROCESS, 2, ro, [1.0, 0.0], None, lambda rows: [f"ref {i}" for i in rows], {})
    assert m["audit_pairs"] == 2 and "audit_agreement" not in m
    with FeedbackStore(db) as store:  # a person prefers the policy sample of both pairs
        person = store.add_annotator("ann", "pw-123456789")
        for t in store.tasks("people"):
            pol = t["response_ids"][t["model_ids"].index("audit-step-2/policy")]
            shown = t["response_ids"]
            store.submit(t["task_id"], person.id, choice="A" if shown[0] == pol else "B",
                         displayed_order=shown)
    m = q.round(ONE_PROCESS, 4, _rollout(["p3"], ["eps zeta"]), [0.0], None, lambda rows: ["ref"], {})
    assert m["audit_round"] == 2 and m["audit_agreement"] == 1.0 and m["audit_n"] == 2
    assert m["audit_agreement_step"] == 2


# ---------------------------------------------------------------------------------------------
# config


def test_config_is_strict(tmp_path):
    base = {"model": str(tmp_path), "data": "x.jsonl", "reward_functions": ["gold"]}
    audit = {"store": str(tmp_path / "a.db"), "project": "p"}
    cfg = config_from_dict(PPOConfig, {**base, "audit": {**audit, "every": 3, "simulate": {}}})
    assert cfg.audit.every == 3 and cfg.audit.k == 4 and cfg.audit.simulate.reward == "gold"
    assert config_from_dict(PPOConfig, base).audit is None
    # audit_alarm=off on the command line arrives as YAML's False
    assert config_from_dict(PPOConfig, base, {"audit_alarm": False}).audit_alarm == "off"
    assert config_from_dict(PPOConfig, base, {"collapse_alarm": False}).collapse_alarm == "off"  # same fix
    with pytest.raises(ConfigError, match="evry"):
        config_from_dict(PPOConfig, {**base, "audit": {**audit, "evry": 3}})
    with pytest.raises(ConfigError, match="lenght"):
        config_from_dict(PPOConfig, {**base, "audit": {**audit, "weights": {"lenght": 1.0}}})
    with pytest.raises(ConfigError, match="project"):
        config_from_dict(PPOConfig, {**base, "audit": {"store": "a.db"}})
    with pytest.raises(ConfigError, match="module:function"):
        config_from_dict(PPOConfig, {**base, "audit": {**audit, "simulate": {"reward": "not a fn"}}})
    with pytest.raises(ConfigError, match="k"):
        config_from_dict(PPOConfig, {**base, "audit": {**audit, "k": 0}})
    with pytest.raises(ConfigError, match="needs an audit queue"):
        config_from_dict(PPOConfig, {**base, "audit_alarm": "stop"})
    with pytest.raises(ConfigError, match="audit_alarm"):
        config_from_dict(PPOConfig, {**base, "audit": audit, "audit_alarm": "loud"})


# ---------------------------------------------------------------------------------------------
# a tiny PPO run


@pytest.mark.slow
def test_audit_alarm_stops_a_tiny_ppo_run(world, sft_model, tmp_path, monkeypatch):
    """Simulated annotators who judge by the *negated* gold reward disagree with a reward (gold) whose
    top-scored samples they are shown: agreement falls below the threshold at the first audit (step 2)
    and the run stops there with a checkpoint, a final model and the round in summary.json."""
    mod = types.ModuleType("audit_contrarian")
    from rlhfkit.synthetic.gold import gold_reward_fn

    mod.score = lambda prompts, completions, **kw: [-g for g in gold_reward_fn(prompts, completions)]
    monkeypatch.setitem(sys.modules, "audit_contrarian", mod)
    out, db = tmp_path / "run", tmp_path / "feedback.db"
    cfg = PPOConfig(model=str(sft_model), data=str(world / "prompts.jsonl"), output_dir=str(out),
                    reward_functions=["gold"], gold="synthetic", learning_rate=5e-4, prompts_per_device=8,
                    mini_batch_size=8, ppo_epochs=1, max_new_tokens=24, max_length=96, max_steps=6,
                    log_every=1, eval_prompts=0, seed=0, collapse_alarm="off",
                    audit={"store": str(db), "project": "audit", "every": 2, "k": 4, "min_answers": 4,
                           "simulate": {"reward": "audit_contrarian:score", "temperature": 0.0}},
                    audit_alarm="stop", audit_threshold=0.5)
    from rlhfkit.train.ppo import train

    train(cfg)
    s = json.loads((out / "summary.json").read_text())
    assert s["stopped_by_alarm"] and s["alarm"]["kind"] == "audit" and s["steps_done"] == 2, s["alarm"]
    assert s["alarm"]["agreement"] < 0.5 and s["alarm"]["n"] == 4 and s["alarms_fired"]["audit"] == 2
    assert (out / "final" / "model.safetensors").is_file() and (out / "checkpoints" / "latest").is_file()
    assert s["audit"]["rounds"] == [{"round": 1, "step": 2, "pairs": 4, "n": 4,
                                     "agreement": s["alarm"]["agreement"]}]
    rows = read_metrics(out)
    last = rows[-1]
    assert last["step"] == 2 and last["alarm_audit"] == 1 and last["audit_n"] == 4
    with FeedbackStore(db) as store:
        tasks = store.tasks("audit")
        assert len(tasks) == 4
        for t in tasks:  # policy vs reference, same prompt (one prompt per task by construction)
            assert sorted(t["model_ids"]) == ["audit-step-2/policy", "audit-step-2/reference"]
        # The policy samples audited are the batch's top proxy (= gold) samples.
        pol = [t["texts"][t["model_ids"].index("audit-step-2/policy")] for t in tasks]
        assert np.mean(gold_reward_fn([t["prompt"] for t in tasks], pol)) >= rows[-1]["gold_reward"]
    state = json.loads((out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
                        / "state.json").read_text())
    assert [r["step"] for r in state["audit_rounds"]] == [2]


@pytest.mark.slow
def test_audit_warns_without_stopping_and_logs_rounds_off_the_log_grid(world, sft_model, tmp_path):
    """`audit_alarm: warn` never stops; an audit step off the log_every grid still gets a metrics line
    (its audit figures only), and summary.json lists both rounds."""
    out, db = tmp_path / "run", tmp_path / "feedback.db"
    cfg = PPOConfig(model=str(sft_model), data=str(world / "prompts.jsonl"), output_dir=str(out),
                    reward_functions=["gold"], learning_rate=5e-4, prompts_per_device=8, mini_batch_size=8,
                    ppo_epochs=1, max_new_tokens=24, max_length=96, max_steps=4, log_every=4, eval_prompts=0,
                    seed=0, collapse_alarm="off", audit_alarm="warn", audit_threshold=1.0,
                    audit={"store": str(db), "project": "audit", "every": 2, "k": 2, "min_answers": 1,
                           "simulate": {"temperature": 0.1}})
    from rlhfkit.train.ppo import train

    train(cfg)
    s = json.loads((out / "summary.json").read_text())
    assert not s["stopped_by_alarm"] and s["steps_done"] == 4
    assert [(r["step"], r["pairs"]) for r in s["audit"]["rounds"]] == [(2, 2), (4, 2)]
    rows = {r["step"]: r for r in read_metrics(out)}
    assert sorted(rows) == [2, 4]
    assert set(rows[2]) <= {"step", "audit_round", "audit_pairs", "audit_proxy", "audit_agreement", "audit_n",
                            "audit_agreement_step", "alarm_audit"} and rows[2]["audit_round"] == 1
    assert rows[4]["audit_round"] == 2 and "proxy_reward" in rows[4]  # the ordinary logging step


@pytest.mark.slow
def test_audit_leaves_training_unchanged_and_resumes_exactly_with_lora(world, sft_model, tmp_path):
    """The reference samples are drawn under a forked RNG, so a run with the audit (LoRA: the reference
    is the adapter-off policy), stopped after its first audit round and resumed, ends with bitwise the
    weights of a run without the audit; the resumed run re-sends nothing already in the store."""
    from safetensors.torch import load_file

    from rlhfkit.train.ppo import train

    kw = dict(model=str(sft_model), data=str(world / "prompts.jsonl"), reward_functions=["gold"],
              learning_rate=5e-4, prompts_per_device=8, mini_batch_size=8, ppo_epochs=1, max_new_tokens=16,
              max_length=96, max_steps=4, log_every=1, eval_prompts=0, seed=0, lora_r=4)
    plain = train(PPOConfig(output_dir=str(tmp_path / "plain"), **kw))
    db = tmp_path / "feedback.db"
    audit = {"store": str(db), "project": "audit", "every": 2, "k": 2, "simulate": {"temperature": 0.1}}
    part = tmp_path / "audited"
    train(PPOConfig(output_dir=str(part), audit=audit, stop_after=2, **kw))
    with FeedbackStore(db) as store:
        first = store.tasks("audit")
    assert len(first) == 2 and all("audit-step-2/policy" in t["model_ids"] for t in first)
    resumed = train(PPOConfig(output_dir=str(part), audit=audit, resume=True, **kw))
    a, b = load_file(str(plain / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with FeedbackStore(db) as store:
        assert len(store.tasks("audit")) == 4 and len(store.judgements("audit")) == 4
    s = json.loads((part / "summary.json").read_text())
    assert [(r["step"], r["n"]) for r in s["audit"]["rounds"]] == [(2, 2), (4, 2)]


@pytest.mark.slow
def test_two_processes_gather_one_round_and_stop_together(world, sft_model, tmp_path):
    """With 2 gloo processes the main process gathers both shares' candidates into one round of k pairs
    and broadcasts the agreement: the stop alarm ends both processes at the same step."""
    import os
    import subprocess

    (tmp_path / "contrarian_judge.py").write_text(
        "from rlhfkit.synthetic.gold import gold_reward_fn\n\n\n"
        "def score(prompts, completions, **kw):\n"
        "    return [-g for g in gold_reward_fn(prompts, completions)]\n")
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    out, db = tmp_path / "run", tmp_path / "feedback.db"
    args = [f"model={sft_model}", f"data={world / 'prompts.jsonl'}", "reward_functions=[gold]",
            "gold=synthetic", "max_steps=3", "prompts_per_device=8", "mini_batch_size=8", "max_new_tokens=24",
            "log_every=1", "learning_rate=5e-4", "eval_prompts=0", f"output_dir={out}",
            f"audit.store={db}", "audit.project=audit", "audit.every=1", "audit.k=4", "audit.min_answers=4",
            "audit.simulate.reward=contrarian_judge:score", "audit.simulate.temperature=0",
            "audit_alarm=stop", "audit_threshold=0.5"]
    accelerate = str(Path(sys.executable).parent / "accelerate")
    res = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
                          "-m", "rlhfkit", "--quiet", "ppo", *args],
                         env=env, capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["processes"] == 2 and s["stopped_by_alarm"] and s["alarm"]["kind"] == "audit", s["alarm"]
    assert s["steps_done"] == 1 and s["audit"]["rounds"][0]["pairs"] == 4
    with FeedbackStore(db) as store:
        assert len(store.tasks("audit")) == 4 and len(store.judgements("audit")) == 4
