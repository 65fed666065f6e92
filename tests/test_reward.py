"""Reward stage on the synthetic world: it learns what the (simulated) labelers prefer, its
audits catch a length-biased labeler, and its model reloads and scores identically anywhere."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.config import RewardConfig
from rlhfkit.data.loading import write_jsonl
from rlhfkit.feedback.simulate import SimulatedLabeler, make_preference_pairs
from rlhfkit.scoring import RewardScorer
from rlhfkit.synthetic.gold import gold_reward_fn
from rlhfkit.synthetic.preferences import reward_vs_gold
from rlhfkit.train.common import read_metrics
from rlhfkit.train.reward import train

# The tests share one sampled pool (session fixture): keep them on one xdist worker.
pytestmark = pytest.mark.xdist_group("reward")

# A labeler whose Bradley-Terry temperature on the gold reward gives ~73% agreement with the gold
# ordering on SFT samples: the range human labelers reach (63-77%, RLHF-DETAILS "Yardsticks").
HUMAN_LIKE_T = 0.6


def lines(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines()]


@pytest.fixture(scope="session")
def pool(world, tmp_path_factory):
    """An SFT policy and its samples: 4 per train prompt (4 times over), 2 per held-out prompt (8x)."""
    from rlhfkit.demo import sft_config
    from rlhfkit.synthetic.preferences import sample_policy
    from rlhfkit.train.sft import train as sft_train

    root = tmp_path_factory.mktemp("reward")
    sft = sft_train(sft_config(world, root, quick=True))
    train_prompts = [r["prompt"] for r in lines(world / "prompts.jsonl")] * 4
    eval_prompts = [r["prompt"] for r in lines(world / "prompts_eval.jsonl")] * 8
    train_samples = sample_policy(sft, train_prompts, samples_per_prompt=4, seed=1)
    eval_samples = sample_policy(sft, eval_prompts, samples_per_prompt=2, seed=2)
    ok = [i for i, s in enumerate(eval_samples) if all(x.strip() for x in s) and s[0] != s[1]]
    P = [eval_prompts[i] for i in ok]
    A, B = [eval_samples[i][0] for i in ok], [eval_samples[i][1] for i in ok]
    ga, gb = np.array(gold_reward_fn(P, A)), np.array(gold_reward_fn(P, B))
    return {"root": root, "sft": sft, "train_prompts": train_prompts, "train_samples": train_samples,
            "eval": (P, A, B, ga, gb)}


def make_data(pool, labeler: SimulatedLabeler, name: str) -> Path:
    rows = make_preference_pairs(pool["train_prompts"], pool["train_samples"], labeler, gold_reward_fn,
                                 rng_seed=3, pairs_per_prompt=3)
    return write_jsonl(pool["root"] / f"{name}.jsonl", rows)


def rm_config(pool, data: Path, out: str, **kw) -> RewardConfig:
    base = dict(model=str(pool["sft"]), data=str(data), output_dir=str(pool["root"] / out),
                learning_rate=1e-3, per_device_batch_size=16, num_epochs=2, max_length=96, eval_fraction=0.1,
                log_every=10, warmup_ratio=0.05, skip_invalid=True, seed=0)
    base.update(kw)
    return RewardConfig(**base)


def gold_accuracy(model_dir: Path, pool) -> tuple[float, float, dict]:
    """Held-out accuracy against the gold ordering, the labeler's Bayes ceiling, length audit."""
    P, A, B, _, _ = pool["eval"]
    res = reward_vs_gold(model_dir, P, A, B, labeler_temperature=HUMAN_LIKE_T)
    return res["accuracy_vs_gold"], res["labeler_bayes_accuracy"], res["length_audit"]


@pytest.mark.slow
def test_reward_model_reaches_the_labelers_ceiling(pool):
    data = make_data(pool, SimulatedLabeler(temperature=HUMAN_LIKE_T, seed=0), "human_like")
    # Three epochs: with two the model still underfits on some builds of the test world (measured on
    # one: 0.665 against a ceiling of 0.728 after 2 epochs, 0.705 after 3).
    final = train(rm_config(pool, data, "rm", num_epochs=3))
    acc, ceiling, _ = gold_accuracy(final, pool)
    print(f"RM accuracy vs gold {acc:.3f}, labeler Bayes accuracy {ceiling:.3f}")
    assert acc >= ceiling - 0.05, (acc, ceiling)
    summary = json.loads((pool["root"] / "rm" / "summary.json").read_text())
    assert summary["final"]["eval_accuracy"] > 0.6  # held-out agreement with the labels, above chance
    assert summary["final"]["eval_loss"] < summary["initial"]["eval_loss"]
    eval_json = json.loads((pool["root"] / "rm" / "eval.json").read_text())
    assert len(eval_json["reliability_bins"]) == 10 and 0 <= eval_json["eval_ece"] < 0.5
    # Normalisation: mean 0 on the training responses (the SFT policy's samples).
    rows = lines(data)
    r, _ = RewardScorer(final, max_length=96).score([x["prompt"] for x in rows] * 2,
                                                    [x["chosen"] for x in rows]
                                                    + [x["rejected"] for x in rows])
    assert abs(float(np.mean(r))) < 0.05
    pool["rm"] = final


@pytest.mark.slow
def test_length_bias_audit_catches_a_length_biased_labeler(pool):
    fair = train(rm_config(pool, make_data(pool, SimulatedLabeler(temperature=0.3, seed=0), "fair"), "fair",
                           num_epochs=1))
    biased = train(rm_config(pool, make_data(pool, SimulatedLabeler(temperature=0.3, length_bias=0.5, seed=0),
                                             "biased"), "biased", num_epochs=1))
    _, _, a_fair = gold_accuracy(fair, pool)
    _, _, a_biased = gold_accuracy(biased, pool)
    print("fair", a_fair, "\nbiased", a_biased)
    assert a_biased["length_corr"] > a_fair["length_corr"] + 0.2
    assert a_biased["length_gap"] > a_fair["length_gap"] + 0.1
    assert a_biased["length_gap"] > 0.1  # right when gold prefers longer, wrong when shorter


def test_reloaded_with_plain_transformers_scores_identically(pool, tmp_path):
    final = train(rm_config(pool, make_data(pool, SimulatedLabeler(temperature=0.3, seed=1), "small"),
                            "reload", max_steps=3))
    P, A, _, _, _ = pool["eval"]
    ours, _ = RewardScorer(final, max_length=96).score(P[:8], A[:8], normalized=False)
    cfg = json.loads((final / "config.json").read_text())
    assert "reward_offset" in cfg and "reward_scale" in cfg
    code = (
        "import json, sys, torch\n"
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
        f"d = {str(final)!r}\n"
        "tok = AutoTokenizer.from_pretrained(d)\n"
        "m = AutoModelForSequenceClassification.from_pretrained(d).eval()\n"
        f"P, A = {P[:8]!r}, {A[:8]!r}\n"
        "texts = [p + a + tok.eos_token for p, a in zip(P, A)]\n"
        "b = tok(texts, return_tensors='pt', padding=True, add_special_tokens=True)\n"
        "with torch.no_grad():\n"
        "    print(json.dumps(m(**b).logits[:, 0].tolist()))\n"
        "assert not any(k.startswith('rlhfkit') for k in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    plain = np.array(json.loads(r.stdout.strip().splitlines()[-1]))
    # Tokenising "prompt + response + eos" as one string can merge tokens across the boundary;
    # where it does not, the scores must match exactly.
    tok_ids = RewardScorer(final).tokenizer
    same = [i for i in range(8) if tok_ids(P[i] + A[i])["input_ids"]
            == tok_ids(P[i])["input_ids"] + tok_ids(A[i], add_special_tokens=False)["input_ids"]]
    assert same
    np.testing.assert_allclose(plain[same], ours[same], rtol=1e-5, atol=1e-5)


def test_left_and_right_padding_score_alike(pool):
    from rlhfkit.data.collate import PairCollator, tokenize_pairs
    from rlhfkit.modeling import load_reward_model, load_tokenizer
    from rlhfkit.scoring import raw_rewards

    tok = load_tokenizer(str(pool["sft"]))
    torch.manual_seed(0)
    model = load_reward_model(str(pool["sft"]), tok).eval()
    P, A, B, _, _ = pool["eval"]
    ds, _ = tokenize_pairs([{"prompt": p, "chosen": a, "rejected": b}
                            for p, a, b in zip(P[:6], A[:6], B[:6])],
                           tok, max_length=96)
    right = raw_rewards(model, PairCollator(tok.pad_token_id, "right")(ds.to_list()))
    left = raw_rewards(model, PairCollator(tok.pad_token_id, "left")(ds.to_list()))
    torch.testing.assert_close(left, right, rtol=1e-4, atol=1e-5)


def test_rankings_train_without_duplicating_prompts(pool):
    prompts, samples = pool["train_prompts"], pool["train_samples"]
    rows = []
    for p, s in zip(prompts, samples):
        distinct = list(dict.fromkeys(x for x in s if x.strip()))
        if len(distinct) < 3:
            continue
        g = gold_reward_fn([p] * len(distinct), distinct)
        order = np.argsort(-np.asarray(g))
        ranks = [0] * len(distinct)
        for rank, i in enumerate(order, start=1):
            ranks[i] = rank
        rows.append({"prompt": p, "responses": distinct, "ranks": ranks})
    data = write_jsonl(pool["root"] / "rank.jsonl", rows)
    cfg = rm_config(pool, data, "ranking", per_device_batch_size=8)
    final = train(cfg)
    summary = json.loads((pool["root"] / "ranking" / "summary.json").read_text())
    assert summary["mode"] == "ranking"
    assert summary["final"]["eval_accuracy"] > 0.6  # gold-ordered rankings: clearly learnable
    from rlhfkit.data.collate import tokenize_rankings
    from rlhfkit.modeling import load_tokenizer
    ds = tokenize_rankings(rows[:3], load_tokenizer(str(final)), max_length=96)
    assert ds.column_names == ["prompt_ids", "response_ids", "ranks"]  # one prompt per ranking, not per pair
    assert len(ds[0]["response_ids"]) == len(rows[0]["responses"])


def test_ties_are_fitted_not_counted_as_wins(pool):
    labeler = SimulatedLabeler(temperature=0.3, tie_margin=0.15, seed=0)
    data = make_data(pool, labeler, "ties")
    n_ties = sum(r["tie"] for r in lines(data))
    assert n_ties > 0
    dropped = train(rm_config(pool, data, "ties_drop", max_steps=3))
    assert json.loads((pool["root"] / "ties_drop" / "summary.json").read_text())["data"]["ties_dropped"] > 0
    fitted = train(rm_config(pool, data, "ties_rk", ties="rao_kupper", tie_param=1.5, max_steps=3))
    assert dropped.is_dir() and fitted.is_dir()
    losses = [r["loss"] for r in read_metrics(pool["root"] / "ties_rk") if "loss" in r]
    assert all(np.isfinite(losses))


def test_resume_and_ensemble(pool):
    data = make_data(pool, SimulatedLabeler(temperature=0.3, seed=2), "resume")
    full = train(rm_config(pool, data, "rm_full", max_steps=6, log_every=1))
    split = rm_config(pool, data, "rm_split", max_steps=6, log_every=1, stop_after=3)
    train(split)
    resumed = train(split.model_copy(update={"stop_after": None, "resume": True}))
    wf, wr = load_file(str(full / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert all(torch.equal(wf[k], wr[k]) for k in wf)
    ens = train(rm_config(pool, data, "rm_ens", max_steps=3, ensemble=2))
    P, A, _, _, _ = pool["eval"]
    mean, std = RewardScorer(ens, max_length=96).score(P[:10], A[:10])
    assert (std > 0).all()  # two seeds, two different heads: the members disagree
    m0, _ = RewardScorer(ens / ".." / "members" / "member-0" / "final", max_length=96).score(P[:10], A[:10])
    m1, _ = RewardScorer(ens / ".." / "members" / "member-1" / "final", max_length=96).score(P[:10], A[:10])
    np.testing.assert_allclose(mean, (m0 + m1) / 2, rtol=1e-5, atol=1e-6)


def test_bad_reward_inputs_are_named(pool, tmp_path):
    from conftest import run_cli

    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    bad_rows = {  # file -> (rows, the row and field the error must name)
        "no_rejected.jsonl": ([good, {"prompt": "p", "chosen": "a"}], "row 2", "rejected"),
        "dup_ranks.jsonl": ([{"prompt": "p", "responses": ["a", "b"], "ranks": [1, 1]}], "row 1", "ranks"),
        "one_resp.jsonl": ([{"prompt": "p", "responses": ["a"], "ranks": [1]}], "row 1", "responses"),
        "nan_margin.jsonl": ([{**good, "margin": float("nan")}], "row 1", "margin"),
    }
    for name, (rows, row, field) in bad_rows.items():
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        r = run_cli("reward", f"model={pool['sft']}", f"data={path}", f"output_dir={tmp_path / 'out'}")
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-1500:]
        assert name in r.stderr and row in r.stderr and field in r.stderr, r.stderr
    # a file with no preference columns at all is named with the columns it needs
    path = tmp_path / "prompts_only.jsonl"
    path.write_text(json.dumps({"prompt": "p"}) + "\n")
    r = run_cli("reward", f"model={pool['sft']}", f"data={path}", f"output_dir={tmp_path / 'out'}")
    assert r.returncode == 2 and "prompts_only.jsonl" in r.stderr and "chosen" in r.stderr


def test_score_cli_two_processes(pool, tmp_path):
    """`rlhf score` writes a reward column; `rlhf reward` runs on 2 gloo processes."""
    import os

    from conftest import run_cli

    data = make_data(pool, SimulatedLabeler(temperature=0.3, seed=4), "twoproc")
    accelerate = str(Path(sys.executable).parent / "accelerate")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
                        "-m", "rlhfkit", "reward", f"model={pool['sft']}", f"data={data}", "max_steps=3",
                        "per_device_batch_size=8", "max_length=96", "skip_invalid=true", "learning_rate=1e-3",
                        f"output_dir={tmp_path / 'rm2'}"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "rm2" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["global_batch"] == 16
    src = tmp_path / "to_score.jsonl"
    P, A, _, ga, _ = pool["eval"]
    write_jsonl(src, [{"prompt": p, "completion": a} for p, a in zip(P[:5], A[:5])])
    out = tmp_path / "scored.jsonl"
    r = run_cli("score", f"model={tmp_path / 'rm2' / 'final'}", f"input={src}", f"output={out}",
                "max_length=96")
    assert r.returncode == 0, r.stderr[-2000:]
    scored = lines(out)
    assert len(scored) == 5 and all(isinstance(x["reward"], float) for x in scored)


# ----------------------------------------------------------------------------- ties read as rankings
#
# Regression: pair rows with `tie: true` read in ranking mode (data_format=ranking) used to become
# ranks [1, 2], so the ranking path trained every tie as a win for "chosen". A tied pair must be
# treated there exactly as the pair path treats it: dropped with ties=drop, fitted as a tie with
# rao_kupper / davidson.

TIE_ROWS = [{"prompt": "p", "chosen": " a", "rejected": " b", "tie": True},
            {"prompt": "p", "chosen": " c", "rejected": " d"},
            {"prompt": "q", "chosen": " e", "rejected": " f", "tie": "true"}]


def _rk(theta):
    """(P(i > j), P(i ~ j)) under Rao-Kupper, written out with pi = exp(r)."""
    def probs(ri, rj):
        pi, pj = math.exp(ri), math.exp(rj)
        return pi / (pi + theta * pj), (theta ** 2 - 1) * pi * pj / ((pi + theta * pj) * (pj + theta * pi))
    return probs


def _davidson(nu):
    def probs(ri, rj):
        pi, pj = math.exp(ri), math.exp(rj)
        z = pi + pj + nu * math.sqrt(pi * pj)
        return pi / z, nu * math.sqrt(pi * pj) / z
    return probs


@pytest.mark.parametrize("ties,param,center", [("rao_kupper", 1.5, 0.0), ("rao_kupper", 3.0, 0.1),
                                               ("davidson", 0.8, 0.0), ("davidson", 2.0, 0.1)])
def test_tied_pairs_read_as_rankings_get_the_pair_path_tie_loss(ties, param, center):
    from rlhfkit.data.collate import RankingCollator
    from rlhfkit.data.formats import normalize
    from rlhfkit.train.reward import _pair_loss

    pairs, _ = normalize(TIE_ROWS, "preference", source="t.jsonl")
    rankings, _ = normalize(TIE_ROWS, "ranking", source="t.jsonl")
    assert [r["ranks"] for r in rankings] == [[1, 1], [1, 2], [1, 1]]
    cfg = RewardConfig(model="m", data="t.jsonl", ties=ties, tie_param=param, center_coef=center)
    rc, rr = torch.tensor([0.4, 1.0, -0.2]), torch.tensor([-0.3, 0.2, 0.5])
    # the pair path: (2B,) rewards, chosen then rejected
    pair_b = {"tie": torch.tensor([bool(r.get("tie")) for r in pairs]), "margin": torch.zeros(3)}
    pair_loss, n_pairs = _pair_loss(cfg, torch.cat([rc, rr]), pair_b)
    # the ranking path: each row's responses in order, one flat (N,) vector
    rank_b = RankingCollator(pad_token_id=0)(
        [{"prompt_ids": [5], "response_ids": [[6, 2], [7, 2]], "ranks": r["ranks"]} for r in rankings])
    rank_loss, n_prompts = _pair_loss(cfg, torch.stack([rc, rr], 1).reshape(-1), rank_b)
    probs = _rk(param) if ties == "rao_kupper" else _davidson(param)
    by_hand = (-math.log(probs(0.4, -0.3)[1]) - math.log(probs(1.0, 0.2)[0])
               - math.log(probs(-0.2, 0.5)[1])) / 3
    by_hand += center * ((0.4 - 0.3) ** 2 + (1.0 + 0.2) ** 2 + (-0.2 + 0.5) ** 2) / 3
    assert pair_loss.item() == pytest.approx(by_hand, rel=1e-5)
    assert rank_loss.item() == pytest.approx(by_hand, rel=1e-5)
    assert n_pairs == n_prompts == 3


def test_tied_pairs_read_as_rankings_train_as_in_pair_mode(world, tmp_path):
    """End to end: the same pair file in ranking and in pair mode drops (ties=drop) or fits
    (rao_kupper, davidson) the same ties and gives the same step losses, held-out report and
    reward offset."""
    from rlhfkit.errors import DataError

    prompts = [r["prompt"] for r in lines(world / "prompts.jsonl")][:12]
    rows = [{"prompt": p, "chosen": f" yes {i}", "rejected": f" no {i}", "tie": i % 3 == 0}
            for i, p in enumerate(prompts)]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    base = dict(model=str(world / "base"), max_steps=2, per_device_batch_size=4, max_length=64,
                eval_fraction=0.25, log_every=1, learning_rate=1e-3, warmup_ratio=0.0, seed=0)

    def run(name, **kw):
        train(RewardConfig(data=str(data), output_dir=str(tmp_path / name), **base, **kw))
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        return summary, [r["loss"] for r in read_metrics(tmp_path / name) if "loss" in r]

    def same(a: dict, b: dict):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5, nan_ok=True), k

    for ties, param in (("drop", 1.5), ("rao_kupper", 1.5), ("davidson", 0.8)):
        s_rank, l_rank = run(f"rank_{ties}", data_format="ranking", ties=ties, tie_param=param)
        s_pair, l_pair = run(f"pair_{ties}", data_format="pairs", ties=ties, tie_param=param)
        assert s_rank["mode"] == "ranking" and s_pair["mode"] == "pairs"
        n_train_ties = 9 - s_pair["train_examples"] if ties == "drop" else 0  # 12 rows, 3 held out
        assert s_rank["train_examples"] == s_pair["train_examples"]
        assert s_rank["data"].get("ties_dropped", 0) == s_pair["data"].get("ties_dropped", 0) == n_train_ties
        assert (n_train_ties > 0) == (ties == "drop")
        assert len(l_rank) == 2 and np.isfinite(l_rank).all()
        np.testing.assert_allclose(l_rank, l_pair, rtol=1e-4)
        same(s_rank["initial"], s_pair["initial"])
        same(s_rank["final"], s_pair["final"])  # held-out ties: out of the accuracy, in the reward mean
        assert s_rank["reward_offset"] == pytest.approx(s_pair["reward_offset"], rel=1e-4, abs=1e-5)
    # nothing but ties with ties=drop: a clear error, not a crash deep in the trainer
    all_tied = write_jsonl(tmp_path / "ties.jsonl", [{**r, "tie": True} for r in rows])
    for fmt in ("ranking", "pairs"):
        with pytest.raises(DataError, match="every training row is a tie"):
            train(RewardConfig(**{**base, "eval_fraction": 0.0}, data=str(all_tied), data_format=fmt,
                               output_dir=str(tmp_path / f"all_tied_{fmt}")))
