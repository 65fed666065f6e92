"""Active selection of comparison pairs (`rlhf collect select=uncertain`): the uncertainty measure by
hand, the ranking it induces, the config checks, and one collect run with a tiny reward ensemble."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rlhfkit.config import CollectConfig, config_from_dict
from rlhfkit.errors import ConfigError
from rlhfkit.feedback.collect import collect, preference_entropy, rank_pairs_by_uncertainty
from rlhfkit.feedback.store import FeedbackStore

torch.set_num_threads(1)


def h2(p: float) -> float:
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


# ---------------------------------------------------------------------------------------------
# the measure


def test_preference_entropy_hand_values():
    # one model, equal rewards: a coin flip, 1 bit
    assert preference_entropy(np.array([0.0]), np.array([0.0])) == pytest.approx([1.0])
    # one model, delta = ln 3: p = 3/4, H = 2 - (3/4) log2 3 = 0.811278...
    assert preference_entropy(np.array([math.log(3)]), np.array([0.0])) == pytest.approx([0.8112781245])
    # two members that are each sure but disagree (+3 and -3): mean p = 1/2, 1 bit -- not the
    # members' mean entropy (0.2754 bits), which would call this pair easy
    ra, rb = np.array([[3.0], [-3.0]]), np.array([[0.0], [0.0]])
    assert preference_entropy(ra, rb) == pytest.approx([1.0])
    # two members that agree on +3: p = sigmoid(3) = 0.952574, H = 0.0667726 + 0.2085873 = 0.275360 bits
    agree = preference_entropy(np.array([[3.0], [3.0]]), np.zeros((2, 1)))
    assert agree == pytest.approx([0.2753599], abs=1e-6)
    # symmetric in A/B, vectorised over pairs, never NaN for huge margins
    r = np.array([[0.0, 2.0, 500.0]])
    e = preference_entropy(r, np.zeros((1, 3)))
    assert e == pytest.approx(preference_entropy(np.zeros((1, 3)), r))
    assert e[1] == pytest.approx(h2(1 / (1 + math.exp(-2.0)))) and 0.0 <= e[2] < 1e-9


def test_ranking_puts_disagreement_and_close_pairs_first():
    # 2 members x 4 candidates: a ~ b close for both members, c split between members, d far above
    #            a     b     c     d
    r = np.array([[0.0, 0.1, 3.0, 6.0],
                  [0.0, 0.1, -3.0, 6.0]])
    ranked, ent = rank_pairs_by_uncertainty(r, np.random.default_rng(0))
    # (a,c): p = 1/2 exactly, 1 bit; (b,c): p = (sig(-2.9) + sig(3.1)) / 2 = 0.50452, 0.99994 bit;
    # (a,b): p = sig(-0.1) = 0.47502, 0.99820 bit; pairs with d: (c,d) p = (sig(-3) + sig(-9)) / 2 = 0.023775,
    # (b,d) p = sig(-5.9) = 0.00273, (a,d) p = sig(-6) = 0.00247
    assert ranked == [(0, 2), (1, 2), (0, 1), (2, 3), (1, 3), (0, 3)]
    assert ent[(0, 2)] == pytest.approx(1.0)
    assert ent[(1, 2)] == pytest.approx(h2(0.5045216), abs=1e-6)
    assert ent[(0, 1)] == pytest.approx(h2(0.4750208), abs=1e-6)
    assert ent[(2, 3)] == pytest.approx(h2(0.0237746), abs=1e-6)


def test_equal_uncertainty_is_broken_at_random_and_seeded():
    zeros = np.zeros((1, 5))  # an untrained head: every pair 1 bit, so selection is random
    orders = [rank_pairs_by_uncertainty(zeros, np.random.default_rng(s))[0] for s in range(4)]
    assert all(sorted(o) == list(itertools.combinations(range(5), 2)) for o in orders)
    assert len({tuple(o) for o in orders}) > 1
    assert rank_pairs_by_uncertainty(zeros, np.random.default_rng(2))[0] == orders[2]


# ---------------------------------------------------------------------------------------------
# config


def test_config_checks(tmp_path):
    resp = tmp_path / "r.jsonl"
    resp.write_text('{"prompt": "p", "response": "x"}\n')
    base = {"store": str(tmp_path / "fb.db"), "project": "p", "responses": str(resp)}
    with pytest.raises(ConfigError, match="selection_model"):
        config_from_dict(CollectConfig, {**base, "select": "uncertain"})
    with pytest.raises(ConfigError, match="not an existing directory"):
        config_from_dict(CollectConfig, {**base, "select": "uncertain",
                                         "selection_model": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match="task_size=2"):
        config_from_dict(CollectConfig, {**base, "select": "uncertain", "selection_model": str(tmp_path),
                                         "task_size": 3})
    with pytest.raises(ConfigError, match="select"):
        config_from_dict(CollectConfig, {**base, "select": "entropy"})
    ok = config_from_dict(CollectConfig, {**base, "select": "uncertain", "selection_model": str(tmp_path)})
    assert ok.selection_model == str(tmp_path)


def test_a_later_round_of_responses_gets_its_own_tasks_and_reruns_add_nothing(tmp_path):
    """pairs_per_prompt counts the tasks among a run's own responses: round 2's new samples of the
    same prompts get new tasks (what iterated rounds and active selection need), a re-run none."""
    def responses(name: str, model: str) -> str:
        rows = [{"prompt": f"prompt {p}", "response": f"{model} answer {p} {k}", "model_id": model}
                for p in range(3) for k in range(3)]
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(path)

    def run(resp: str) -> int:
        return collect(CollectConfig(store=str(tmp_path / "fb.db"), project="p", responses=resp,
                                     pairs_per_prompt=2, output_dir=str(tmp_path / "c")))["tasks_created"]

    r1, r2 = responses("r1.jsonl", "policy-1"), responses("r2.jsonl", "policy-2")
    assert (run(r1), run(r1), run(r2), run(r2), run(r1)) == (6, 0, 6, 0, 0)
    with FeedbackStore(str(tmp_path / "fb.db")) as s:
        assert sorted(len(set(t["model_ids"])) for t in s.tasks("p")) == [1] * 12  # each round's own pairs


# ---------------------------------------------------------------------------------------------
# collect with a tiny reward-model ensemble


@pytest.fixture(scope="module")
def tiny_ensemble(sft_model, tmp_path_factory) -> Path:
    """Two reward models from the SFT trunk with differently seeded heads, as `rlhf reward
    ensemble=2` lays them out: member 0 at the root with ensemble.json naming the other."""
    from rlhfkit.modeling import load_reward_model, load_tokenizer, save_hf

    root = tmp_path_factory.mktemp("ens")
    tok = load_tokenizer(str(sft_model))
    for k in range(2):
        torch.manual_seed(100 + k)
        save_hf(load_reward_model(str(sft_model), tok), tok, root / f"member-{k}")
    (root / "member-0" / "ensemble.json").write_text(json.dumps({"members": ["../member-1"]}))
    return root / "member-0"


def test_score_members_agrees_with_score(tiny_ensemble):
    from rlhfkit.scoring import RewardScorer

    scorer = RewardScorer(tiny_ensemble, max_length=96)
    P = ["review of the lamp :"] * 3
    R = [" the lid is fine .", " i never liked it .", " the weight is decent ."]
    members = scorer.score_members(P, R, batch_size=2)
    mean, std = scorer.score(P, R)
    assert members.shape == (2, 3)
    # batch_size 2 vs the default 32: other padding, so float32 noise (measured 6.6e-7 absolute)
    assert mean == pytest.approx(members.mean(0), rel=1e-5, abs=1e-5)
    assert std == pytest.approx(members.std(0), rel=1e-5, abs=1e-5)
    assert not np.allclose(members[0], members[1])  # distinct heads: the members can disagree


def test_collect_uncertain_picks_the_most_uncertain_pairs(world, tiny_ensemble, tmp_path):
    from rlhfkit.scoring import RewardScorer

    prompts = [json.loads(ln)["prompt"] for ln in (world / "prompts.jsonl").read_text().splitlines()][:6]
    texts = [json.loads(ln)["completion"] for ln in (world / "sft.jsonl").read_text().splitlines()]
    rows = [{"prompt": p, "response": texts[(7 * i + k) % len(texts)], "model_id": "sft"}
            for i, p in enumerate(prompts) for k in range(5)]
    resp = tmp_path / "responses.jsonl"
    resp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = CollectConfig(store=str(tmp_path / "fb.db"), project="p", responses=str(resp), pairs_per_prompt=2,
                        select="uncertain", selection_model=str(tiny_ensemble), seed=0,
                        output_dir=str(tmp_path / "c"))
    summary = collect(cfg)
    assert summary["tasks_created"] == 12
    sel = summary["selection"]
    assert sel["members"] == 2 and sel["candidate_pairs"] == 6 * 10 and sel["chosen_pairs"] == 12
    assert sel["uncertainty_chosen_mean"] > sel["uncertainty_all_mean"]
    assert json.loads((tmp_path / "c" / "summary.json").read_text())["selection"] == sel

    # independently: per prompt, the two tasks are the two highest-entropy pairs of its 5 responses
    scorer = RewardScorer(tiny_ensemble)
    with FeedbackStore(cfg.store) as s:
        tasks = s.tasks("p")
    for p in prompts:
        cands = list(dict.fromkeys(r["response"] for r in rows if r["prompt"] == p))
        r = scorer.score_members([p] * len(cands), cands)
        ent = {frozenset((cands[i], cands[j])): preference_entropy(r[:, [i]], r[:, [j]])[0]
               for i, j in itertools.combinations(range(len(cands)), 2)}
        top2 = set(sorted(ent, key=ent.get, reverse=True)[:2])
        assert {frozenset(t["texts"]) for t in tasks if t["prompt"] == p} == top2

    # idempotent: a re-run adds nothing (and scores nothing)
    again = collect(cfg)
    assert again["tasks_created"] == 0 and again["selection"]["candidate_pairs"] == 0


@pytest.mark.slow
def test_pipeline_round_two_selects_with_round_one_reward_model(world, sft_model, tmp_path):
    """`collect.select: uncertain` in a two-round pipeline: round 1 has no reward model and picks at
    random; round 2 ranks its pairs with round 1's reward model."""
    from rlhfkit.config import PipelineConfig
    from rlhfkit.pipeline import Pipeline

    spec = {
        "output_dir": str(tmp_path / "p"), "project": "t", "policy": str(sft_model), "rounds": 2,
        "collect": {"prompts": str(world / "prompts.jsonl"), "max_prompts": 16, "num_samples": 4,
                    "pairs_per_prompt": 1, "max_new_tokens": 16, "select": "uncertain"},
        "label": {"mode": "simulate", "num_annotators": 1, "temperature": 0.1},
        "reward": {"learning_rate": 1e-3, "per_device_batch_size": 8, "max_steps": 3, "max_length": 64,
                   "log_every": 1},
        "rl": {"grpo": {"estimator": "grpo", "learning_rate": 5e-4, "prompts_per_device": 4,
                        "mini_batch_size": 8, "max_new_tokens": 8, "max_length": 64, "max_steps": 1,
                        "eval_prompts": 0, "log_every": 1}},
    }
    result = Pipeline(config_from_dict(PipelineConfig, spec)).run()
    assert len(result["rounds"]) == 2
    # round 2's
    sel = json.loads((tmp_path / "p" / "round2" / "collect" / "summary.json").read_text())["selection"]
    assert sel["selection_model"] == str(result["rounds"][0]["reward"])
    assert sel["chosen_pairs"] > 0 and sel["uncertainty_chosen_mean"] >= sel["uncertainty_all_mean"]
