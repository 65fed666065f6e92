"""Policy evaluation (rlhfkit.evaluate.policies) and the report (rlhfkit.evaluate.report)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from rlhfkit.evaluate.metrics import reliability_bins
from rlhfkit.evaluate.policies import distinct_n, evaluate_policies, win_rate
from rlhfkit.evaluate.report import curve_groups, plot_curves, plot_frontier, write_report
from conftest import run_cli

torch.set_num_threads(1)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
N_PROMPTS, N_SAMPLES = 12, 2
RM_OFFSET = 0.75


def assert_png(path: Path) -> None:
    import matplotlib.image as mpimg

    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50 and img.shape[2] in (3, 4)


def eval_prompts(world: Path, n: int = N_PROMPTS) -> list[str]:
    return [json.loads(ln)["prompt"] for ln in (world / "prompts_eval.jsonl").read_text().splitlines()][:n]


@pytest.fixture(scope="module")
def reward_model(world, tmp_path_factory) -> Path:
    """An untrained reward model (base LM + fresh head) with a stored offset: enough to check the
    offset is applied and that scores are paired per sample; its accuracy is not the point here."""
    from rlhfkit.modeling import load_reward_model, load_tokenizer, save_hf

    torch.manual_seed(0)
    tok = load_tokenizer(str(world / "base"))
    model = load_reward_model(str(world / "base"), tok)
    return save_hf(model, tok, tmp_path_factory.mktemp("rm") / "final",
                   extra_config={"reward_offset": RM_OFFSET})


@pytest.fixture(scope="module")
def evaluation(world, sft_model, reward_model) -> dict:
    torch.manual_seed(0)
    return evaluate_policies({"base": world / "base", "sft": sft_model}, eval_prompts(world), reference="sft",
                             reward_model=reward_model, num_samples=N_SAMPLES, max_new_tokens=40, seed=3)


# ----------------------------------------------------------------------------- hand-computed pieces


def test_distinct_n_hand_example():
    texts = ["a b a b", "a c", ""]
    # unigrams a b a b a c: 3 distinct of 6; bigrams (a b) (b a) (a b) | (a c): 3 of 4 (none across texts)
    assert distinct_n(texts, 1) == pytest.approx(3 / 6)
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert distinct_n(["a"], 2) == 0.0


def test_win_rate_counts_ties_half_with_standard_error():
    w = win_rate([1.0, 0.0, 2.0, 2.0], [0.0, 1.0, 2.0, 3.0])  # win, loss, tie, loss
    assert w["rate"] == pytest.approx(1.5 / 4)
    outcomes = np.array([1.0, 0.0, 0.5, 0.0])
    assert w["se"] == pytest.approx(outcomes.std() / 2)
    assert (w["wins"], w["ties"], w["losses"]) == (1, 1, 2)
    # no ties: the binomial sqrt(p(1-p)/n)
    assert win_rate([1, 1, 1, 0], [0, 0, 0, 1])["se"] == pytest.approx(math.sqrt(0.75 * 0.25 / 4))


# ----------------------------------------------------------------------------- evaluate_policies


def test_reference_against_itself_is_exactly_even(evaluation):
    sft = evaluation["policies"]["sft"]
    n = N_PROMPTS * N_SAMPLES
    assert sft["n"] == n
    assert sft["kl"] == 0.0 and sft["kl_se"] == 0.0  # exactly, not approximately
    assert sft["win_rate"] == 0.5 and sft["win_counts"] == {"wins": 0, "ties": n, "losses": 0}
    assert sft["rm_win_rate"] == 0.5


def test_sft_beats_base_and_base_is_far_from_sft(evaluation):
    base, sft = evaluation["policies"]["base"], evaluation["policies"]["sft"]
    # The SFT model was trained on the completion format the gold reward rewards.
    assert base["format_rate"] < sft["format_rate"]
    assert base["gold_mean"] < sft["gold_mean"]
    assert base["win_rate"] < 0.5
    assert base["eos_rate"] < sft["eos_rate"]
    assert base["kl"] > 1.0  # sequence KL(base || sft) in nats: the base rarely writes SFT-style text
    for m in (base, sft):
        q = m["gold_quantiles"]
        assert -1.5 <= q["q10"] <= q["q25"] <= q["q50"] <= q["q75"] <= q["q90"] <= 1.0
        assert 0 < m["distinct_1"] <= m["distinct_2"] <= 1  # bigrams repeat less often than words
        assert m["length_tokens"] > 0 and m["length_words"] > 0
    json.dumps(evaluation)  # serialisable as is


def test_reward_model_offset_is_applied(evaluation, reward_model):
    from rlhfkit.scoring import RewardScorer

    scorer = RewardScorer(reward_model, max_length=128)
    entry = evaluation["samples"][0]
    shown = [s for name in ("base", "sft") for s in entry["completions"][name]]
    raw, _ = scorer.score([entry["prompt"]] * len(shown), [s["text"] for s in shown], normalized=False)
    np.testing.assert_allclose([s["rm"] for s in shown], raw - RM_OFFSET, atol=1e-5)


def test_side_by_side_samples_share_prompts(evaluation, world):
    prompts = eval_prompts(world)
    assert [s["prompt"] for s in evaluation["samples"]] == prompts[:len(evaluation["samples"])]
    for entry in evaluation["samples"]:
        assert set(entry["completions"]) == {"base", "sft"}
        assert all(len(v) == N_SAMPLES for v in entry["completions"].values())


def test_bad_reference_is_a_config_error(world):
    from rlhfkit.errors import ConfigError

    with pytest.raises(ConfigError, match="reference"):
        evaluate_policies({"base": world / "base"}, ["x"], reference="sft")


def test_prompt_file_errors_name_file_row_and_field(tmp_path):
    from rlhfkit.errors import DataError
    from rlhfkit.evaluate.policies import read_prompts

    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a :"}\n{"prompt": "b :"}\n{"text": "c"}\n')
    with pytest.raises(DataError, match=r"p\.jsonl, row 3, field 'prompt': missing"):
        read_prompts(f)
    f.write_text('{"prompt": "a :"}\n{"prompt": "b :"}\n')
    assert read_prompts(f, limit=1) == ["a :"]


# ----------------------------------------------------------------------------- report


def test_frontier_with_three_points_plots(tmp_path):
    pts = [{"method": "ppo", "label": "kl 0.05", "kl": 2.0, "gold": 0.1, "proxy": 0.4},
           {"method": "ppo", "label": "kl 0.01", "kl": 6.0, "gold": 0.3, "proxy": 1.1},
           {"method": "dpo", "label": "beta 0.1", "kl": 4.0, "gold": 0.25, "proxy": None}]
    assert_png(plot_frontier(pts, tmp_path / "f.png"))
    assert plot_frontier([{"method": "x", "kl": None, "gold": 0.1}], tmp_path / "g.png") is None


def test_curve_groups_pick_logged_keys():
    ppo_rows = [{"step": s, "proxy_reward": 0.1 * s, "gold_reward": 0.05 * s, "seq_kl": 0.2 * s,
                 "response_length": 20.0, "kl_coef": 0.05} for s in range(1, 4)]
    ppo_rows.insert(0, {"step": 0, "eval_gold": 0.0})
    groups = dict(curve_groups(ppo_rows))
    assert groups["reward (proxy vs gold)"] == ["proxy_reward", "gold_reward", "eval_gold"]
    assert groups["KL to reference (nats)"] == ["seq_kl"]
    assert groups["response length (tokens)"] == ["response_length"]
    assert "loss" not in groups
    assert curve_groups([{"step": 1, "loss": float("nan")}]) == []


def test_report_links_valid_pngs(evaluation, sft_model, tmp_path):
    run_dir = sft_model.parent  # the SFT run: metrics.jsonl with the loss per logged step
    assert (run_dir / "metrics.jsonl").is_file()
    rng = np.random.default_rng(0)
    rc, rr = rng.normal(1.0, 1.0, 200), rng.normal(0.0, 1.0, 200)
    rm_run = tmp_path / "rm_run"
    rm_run.mkdir()
    (rm_run / "eval.json").write_text(json.dumps({
        "step": 10, "eval_pairs": 200, "eval_accuracy": 0.76, "eval_ece": 0.04, "eval_length_corr": 0.1,
        "eval_acc_chosen_longer": 0.8, "eval_acc_chosen_shorter": 0.7, "eval_length_gap": 0.1,
        "reliability_bins": reliability_bins(rc, rr)}))
    frontier = [{"method": "sft", "label": "sft", "kl": 0.0, "gold": 0.1, "proxy": 0.0},
                {"method": "ppo", "label": "step 10", "kl": 3.0, "gold": 0.3, "proxy": 0.8},
                {"method": "ppo", "label": "step 20", "kl": 7.0, "gold": 0.35, "proxy": 1.4}]
    report = write_report(tmp_path / "out", evaluation=evaluation, runs={"sft": run_dir},
                          reward_runs={"rm": rm_run}, agreement={"fleiss_kappa": 0.61, "pairwise": 0.8},
                          frontier=frontier, title="test report")
    text = report.read_text()
    assert text.startswith("# test report")
    table = text.split("## Final numbers")[1].split("\n## ")[0]
    rows = {ln.split("|")[1].strip(): ln for ln in table.splitlines() if ln.startswith("| ")}
    assert "base" in rows and "sft" in rows
    assert "0.500 ± 0.000" in rows["sft"]  # sft's win rate against itself
    assert "| fleiss_kappa | 0.610 |" in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert {"plots/frontier.png", "plots/curves_sft.png", "plots/reliability_rm.png"} <= set(links)
    for link in links:
        assert not Path(link).is_absolute()
        assert_png(report.parent / link)
    assert "### Prompt 1" in text


def test_curves_from_a_real_short_run(sft_model, tmp_path):
    from rlhfkit.train.common import read_metrics

    rows = read_metrics(sft_model.parent)
    assert [g for g, _ in curve_groups(rows)][:1] == ["loss"]
    assert_png(plot_curves(rows, tmp_path / "c.png", "sft"))


# ----------------------------------------------------------------------------- CLI


def test_cli_evaluate_writes_json_and_report(world, sft_model, tmp_path):
    out = tmp_path / "ev"
    res = run_cli("evaluate", f"policies.base={world / 'base'}", f"policies.sft={sft_model}", "reference=sft",
                  f"prompts={world / 'prompts_eval.jsonl'}", "max_prompts=4", "max_new_tokens=16",
                  f"runs.sft={sft_model.parent}", f"output_dir={out}", env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["prompts"] == 4 and ev["policies"]["sft"]["kl"] == 0.0
    assert (out / "report.md").is_file() and (out / "config.yaml").is_file()
    assert str(out / "report.md") in res.stdout


def test_cli_evaluate_rejects_unknown_reference(world, tmp_path):
    res = run_cli("evaluate", f"policies.base={world / 'base'}", "reference=sft",
                  f"prompts={world / 'prompts_eval.jsonl'}", f"output_dir={tmp_path / 'ev'}")
    assert res.returncode == 2
    assert "reference 'sft' is not one of the policies (base)" in res.stderr
    assert not (tmp_path / "ev").exists()  # failed before any work


def test_health_verdict_by_hand():
    from rlhfkit.evaluate.metrics import health_verdict

    ref = {"distinct_2": 0.40, "top_completion_share": 0.02, "length_tokens": 12.0}
    healthy = health_verdict({"distinct_2": 0.36, "top_completion_share": 0.05, "length_tokens": 15.0,
                              "win_rate": 0.7, "rm_win_rate": 0.8}, ref)
    assert healthy["verdict"] == "healthy" and healthy["reasons"] == []
    assert healthy["distinct_2_vs_reference"] == pytest.approx(0.9) and healthy["length_vs_reference"] == 1.25
    generic = health_verdict({"distinct_2": 0.12, "top_completion_share": 0.6, "length_tokens": 6.0}, ref)
    assert generic["verdict"] == "collapsed" and len(generic["reasons"]) == 2  # 30% diversity, 60% one answer
    hacked = health_verdict({"distinct_2": 0.38, "top_completion_share": 0.03, "length_tokens": 40.0,
                             "win_rate": 0.3, "rm_win_rate": 0.9}, ref)
    assert hacked["verdict"] == "reward hacked: proxy up, gold down"
    alarmed = health_verdict({"distinct_2": 0.38, "top_completion_share": 0.03}, ref, {"collapse": 6})
    assert alarmed["verdict"] == "collapsed" and "collapse alarm at step 6" in alarmed["reasons"]


def test_report_does_not_crown_a_collapsed_policy(tmp_path):
    """The headline table carries the verdict and the health section names the repeated completion
    and the training run's alarm."""
    from rlhfkit.evaluate.metrics import health_verdict

    sft = {"gold_mean": 0.0, "win_rate": 0.5, "win_rate_se": 0.0, "distinct_1": 0.2, "distinct_2": 0.4,
           "top_completion": "the lamp is fine .", "top_completion_share": 0.02, "length_tokens": 12.0,
           "kl": 0.0}
    ppo = {"gold_mean": 0.6, "win_rate": 0.86, "win_rate_se": 0.02, "distinct_1": 0.05, "distinct_2": 0.12,
           "top_completion": "i would truly recommend it .", "top_completion_share": 0.7,
           "length_tokens": 8.0, "kl": 8.6}
    for m in (sft, ppo):
        m["health"] = health_verdict(m, sft)
    run = tmp_path / "round1" / "rl-ppo"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"stage": "ppo", "alarms_fired": {"collapse": 8}}))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "proxy_reward": 0.1}) + "\n")
    evaluation = {"reference": "sft", "prompts": 4, "num_samples": 1, "policies": {"sft": sft, "rl-ppo": ppo},
                  "samples": []}
    text = write_report(tmp_path / "out", evaluation=evaluation, runs={"round1/rl-ppo": run}).read_text()
    table = text.split("## Final numbers")[1].split("\n## ")[0]
    rows = {ln.split("|")[1].strip(): ln for ln in table.splitlines() if ln.startswith("| ")}
    assert rows["rl-ppo"].rstrip(" |").endswith("collapsed") and rows["sft"].rstrip(" |").endswith("healthy")
    health = text.split("## Health")[1].split("\n## ")[0]
    assert "i would truly recommend it . (0.70)" in health and "collapse at step 8" in health
    from rlhfkit.demo import final_table
    assert final_table(evaluation).splitlines()[2].endswith("collapsed")
