"""`rlhf collect`, `rlhf label simulate`, `rlhf label export`: behaviour and the round trip into training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rlhfkit.config import CollectConfig, LabelExportConfig, LabelSimulateConfig
from rlhfkit.errors import ConfigError, DataError
from rlhfkit.feedback.collect import collect
from rlhfkit.feedback.export import export, export_rows
from rlhfkit.feedback.simulate import simulate_labels, simulated_judgement
from rlhfkit.feedback.store import FeedbackStore, NotFoundError

torch.set_num_threads(1)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def fake_gold(prompts: list[str], completions: list[str]) -> list[float]:
    """A reward for tests: the number written in the completion ("... 0.7")."""
    return [float(c.split()[-1]) for c in completions]


def import_file(tmp_path: Path, n_prompts: int = 6, per_prompt: int = 4, models=("m1", "m2")) -> Path:
    rows = []
    for p in range(n_prompts):
        for k in range(per_prompt):
            rows.append({"prompt": f"prompt {p}", "response": f"answer {p} {k} {(p * 7 + k * 3) % 10 / 10}",
                         "model_id": models[k % len(models)]})
    return write_jsonl(tmp_path / "responses.jsonl", rows)


# ---------------------------------------------------------------------------------------------
# collect


def test_collect_import_is_idempotent_prefers_cross_model_pairs_and_marks_calibration(tmp_path):
    cfg = CollectConfig(store=str(tmp_path / "fb.db"), project="p", responses=str(import_file(tmp_path)),
                        pairs_per_prompt=2, calibration=3, annotators_per_task=2,
                        output_dir=str(tmp_path / "c"))
    first = collect(cfg)
    assert (first["prompts_added"], first["responses_added"], first["tasks_created"]) == (6, 24, 12)
    assert first["calibration_tasks_created"] == 3
    again = collect(cfg)
    assert (again["prompts_added"], again["responses_added"], again["tasks_created"]) == (0, 0, 0)
    with FeedbackStore(cfg.store) as s:
        tasks = s.tasks("p")
        assert s.get_project("p").annotators_per_task == 2
    assert len(tasks) == 12 and sum(t["calibration"] for t in tasks) == 3
    # 2 models x 2 responses each: 4 cross-model pairs per prompt, so both chosen pairs are cross-model
    assert all(len(set(t["model_ids"])) == 2 for t in tasks)
    assert all(t["annotators_needed"] == 2 and t["kind"] == "pair" for t in tasks)
    # same seed, fresh store: the same tasks
    cfg2 = cfg.model_copy(update={"store": str(tmp_path / "fb2.db")})
    collect(cfg2)
    with FeedbackStore(cfg2.store) as s:
        assert [(t["prompt"], t["texts"]) for t in s.tasks("p")] == [(t["prompt"], t["texts"]) for t in tasks]


def test_collect_rankings(tmp_path):
    cfg = CollectConfig(store=str(tmp_path / "fb.db"), project="p", responses=str(import_file(tmp_path)),
                        task_size=3, pairs_per_prompt=1, output_dir=str(tmp_path / "c"))
    assert collect(cfg)["tasks_created"] == 6
    with FeedbackStore(cfg.store) as s:
        assert all(t["kind"] == "ranking" and len(t["response_ids"]) == 3 for t in s.tasks("p"))


def test_collect_malformed_import_row_names_row_and_field(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "response": "a", "model_id": "m"},
                                               {"prompt": "p", "response": "", "model_id": "m"}])
    cfg = CollectConfig(store=str(tmp_path / "fb.db"), project="p", responses=str(bad),
                        output_dir=str(tmp_path))
    with pytest.raises(DataError) as e:
        collect(cfg)
    assert e.value.row == 2 and e.value.field == "response" and "bad.jsonl" in str(e.value)


def test_collect_config_needs_exactly_one_source(tmp_path):
    with pytest.raises(Exception, match="exactly one"):
        CollectConfig(store="x.db", project="p")


# ---------------------------------------------------------------------------------------------
# simulated annotators


def test_zero_temperature_labeler_follows_gold_on_every_non_tie():
    rng = np.random.default_rng(0)
    gold = {i: float(g) for i, g in enumerate(rng.normal(size=40))}
    words = {i: 5 for i in gold}
    for a in range(0, 40, 2):
        for shown in ([a, a + 1], [a + 1, a]):
            out = simulated_judgement(shown, gold, words, rng, temperature=0.0, position_bias=3.0,
                                      length_bias=0.5)
            picked = shown[0] if out["choice"] == "A" else shown[1]
            assert gold[picked] == max(gold[a], gold[a + 1])
    # K-way at T = 0 is the gold ordering
    out = simulated_judgement([3, 1, 2, 0], gold, words, rng, temperature=0.0)
    assert [g[0] for g in out["ranking"]] == sorted([0, 1, 2, 3], key=lambda i: -gold[i])


def test_ties_strength_and_tie_kind():
    gold, words = {1: 0.50, 2: 0.52, 3: -0.9, 4: -0.88, 5: 0.9}, {i: 3 for i in range(1, 6)}
    kw = dict(temperature=0.0, tie_threshold=0.05, median=0.0, strength_bins=(0.1, 0.3, 0.6))
    rng = np.random.default_rng(0)
    assert simulated_judgement([1, 2], gold, words, rng, **kw)["choice"] == "tie_good"  # both above median
    assert simulated_judgement([3, 4], gold, words, rng, **kw)["choice"] == "tie_bad"
    out = simulated_judgement([5, 3], gold, words, rng, **kw)  # |d| = 1.8: strength 4
    assert out == {"choice": "A", "strength": 4}
    assert simulated_judgement([1, 5], gold, words, rng, **kw) == {"choice": "B", "strength": 3}  # |d| = 0.4


def _sim_project(tmp_path: Path, n_prompts: int, annotators_per_task: int = 1, **collect_kw) -> str:
    cfg = CollectConfig(store=str(tmp_path / "fb.db"), project="p",
                        responses=str(import_file(tmp_path, n_prompts=n_prompts)),
                        annotators_per_task=annotators_per_task, output_dir=str(tmp_path / "c"), **collect_kw)
    collect(cfg)
    return cfg.store


def test_simulate_through_the_store_position_bias_shows_as_left_preference(tmp_path):
    store = _sim_project(tmp_path, n_prompts=60, pairs_per_prompt=3)
    base = dict(store=store, project="p", reward=f"{__name__}:fake_gold", output_dir=str(tmp_path / "s"))
    # A near coin-flip labeler (huge T) with a strong pull to the left: the left wins ~ sigmoid(1.5) = 0.82
    biased = simulate_labels(LabelSimulateConfig(**base, num_annotators=2, temperature=1e6, position_bias=1.5,
                                                 seed=1, name_prefix="biased"))
    assert biased["judgements"] == 180 and biased["progress"]["judgements_open"] == 0
    assert biased["left_share"] > 0.72
    with FeedbackStore(store) as s:
        js = s.judgements("p")
    # the left was chosen (position 0), whatever the canonical order: position bias is on what was shown
    assert np.mean([j["position_chosen"] == 0 for j in js]) == biased["left_share"]
    assert 0.35 < np.mean([j["choice"] == "A" for j in js]) < 0.65  # canonical A/B stays balanced


def test_simulate_cold_labeler_agrees_with_reward_and_fills_overlap(tmp_path):
    store = _sim_project(tmp_path, n_prompts=10, annotators_per_task=3, pairs_per_prompt=2)
    out = simulate_labels(LabelSimulateConfig(store=store, project="p", reward=f"{__name__}:fake_gold",
                                              temperature=0.0, num_annotators=3,
                                              output_dir=str(tmp_path / "s")))
    assert out["judgements"] == 60 and out["agreement_with_reward"] == 1.0 and out["left_share"] is not None
    assert out["progress"]["tasks_complete"] == 20
    # running again finds nothing left to do and adds no annotators
    again = simulate_labels(LabelSimulateConfig(store=store, project="p", reward=f"{__name__}:fake_gold",
                                                num_annotators=3, output_dir=str(tmp_path / "s")))
    assert again["judgements"] == 0


def test_simulate_unknown_project_and_bad_reward(tmp_path):
    store = str(tmp_path / "fb.db")
    FeedbackStore(store).close()
    with pytest.raises(NotFoundError, match="unknown project 'ghost'"):
        simulate_labels(LabelSimulateConfig(store=store, project="ghost", output_dir=str(tmp_path / "s")))
    with pytest.raises(ConfigError, match="cannot load"):
        simulate_labels(LabelSimulateConfig(store=store, project="ghost", reward="nowhere.mod:fn",
                                            output_dir=str(tmp_path / "s")))


# ---------------------------------------------------------------------------------------------
# export


@pytest.fixture
def three_annotators(tmp_path):
    """Two pair tasks judged by 3 annotators: task 1 votes A, A, B (strengths 4, 2, 1) and task 2
    votes A, B, tie_good (no majority)."""
    s = FeedbackStore(tmp_path / "fb.db")
    s.create_project("p", annotators_per_task=3)
    pid = s.add_prompt("p", "the prompt")
    r = [s.add_response(pid, f"resp {i}", f"model{i}") for i in range(4)]
    t1, t2 = s.create_task("p", [r[0], r[1]]), s.create_task("p", [r[2], r[3]])
    anns = [s.add_annotator(n, "pw") for n in ("x", "y", "z")]
    # canonical choices, given via the displayed order [second, first] so "B" = canonical A
    for a, choice, st in zip(anns, ["B", "B", "A"], [4, 2, 1]):
        s.submit(t1, a.id, choice=choice, strength=st, displayed_order=[r[1], r[0]])
    for a, choice in zip(anns, ["A", "B", "tie_good"]):
        s.submit(t2, a.id, choice=choice, displayed_order=[r[2], r[3]])
    yield s, r
    s.close()


def test_export_majority_agreement_by_hand(three_annotators):
    s, r = three_annotators
    rows, stats = export_rows(s, "p", aggregate="majority")
    assert len(rows) == 1 and stats["no_majority"] == 1
    row = rows[0]
    assert (row["chosen"], row["rejected"]) == ("resp 0", "resp 1")
    assert row["agreement"] == pytest.approx(2 / 3)  # x and y of x, y, z
    assert row["margin"] == pytest.approx((1.0 + 0.3333) / 2)  # mean margin of the majority (strengths 4, 2)
    assert row["n_annotators"] == 3 and row["chosen_model"] == "model0" and row["tie"] is False
    assert sorted(row["annotators"]) == ["x", "y", "z"]
    assert export_rows(s, "p", aggregate="majority", min_agreement=0.7)[0] == []


def test_export_per_judgement_and_ties(three_annotators):
    s, r = three_annotators
    rows, stats = export_rows(s, "p", aggregate="judgement", ties="drop")
    assert len(rows) == 5 and stats["ties_dropped"] == 1
    t1 = [x for x in rows if x["chosen_id"] in (r[0], r[1])]
    assert [(x["annotator"], x["chosen"], x["margin"]) for x in t1] == [
        ("x", "resp 0", 1.0), ("y", "resp 0", 0.3333), ("z", "resp 1", 0.0)]
    assert all(x["agreement"] == pytest.approx(2 / 3) for x in t1)
    kept, _ = export_rows(s, "p", ties="keep")
    ties = [x for x in kept if x["tie"]]
    # every preference row has a strength, so the margin column stays; a tie has no strength: 0.0
    assert len(ties) == 1 and ties[0]["tie_kind"] == "tie_good" and ties[0]["margin"] == 0.0
    ranking, _ = export_rows(s, "p", rankings="ranking")
    assert ranking[0]["responses"] == ["resp 0", "resp 1"] and ranking[0]["ranks"] == [1, 2]


def test_export_reads_back_with_the_data_layer(three_annotators, tmp_path):
    from rlhfkit.data.formats import normalize
    from rlhfkit.data.loading import read_records

    s, _ = three_annotators
    out = export(LabelExportConfig(store=s.url, project="p", output=str(tmp_path / "prefs.jsonl"),
                                   ties="keep"))
    rows, _ = normalize(read_records(out), "preference", source=str(out))
    assert len(rows) == 6 and sum(r.get("tie", False) for r in rows) == 1 and "margin" in rows[0]
    ds_dir = export(LabelExportConfig(store=s.url, project="p", output=str(tmp_path / "prefs_ds")))
    rows2, _ = normalize(read_records(ds_dir), "preference", source=str(ds_dir))
    assert len(rows2) == 5
    with pytest.raises(NotFoundError):
        export(LabelExportConfig(store=s.url, project="nope", output=str(tmp_path / "x.jsonl")))


# ---------------------------------------------------------------------------------------------
# the round trip on the synthetic world


@pytest.mark.slow
def test_round_trip_collect_simulate_export_train(world, tmp_path):
    from rlhfkit.config import DPOConfig, RewardConfig
    from rlhfkit.train.dpo import train as dpo_train
    from rlhfkit.train.reward import train as reward_train

    base = str(world / "base")
    store = str(tmp_path / "fb.db")
    summary = collect(CollectConfig(
        store=store, project="world", prompts=str(world / "prompts.jsonl"), max_prompts=12,
        models=[base, base], model_names=["base-a", "base-b"], num_samples=2, max_new_tokens=24,
        pairs_per_prompt=2, annotators_per_task=2, calibration=1, seed=0,
        output_dir=str(tmp_path / "collect")))
    assert summary["tasks_created"] >= 12
    sim = simulate_labels(LabelSimulateConfig(store=store, project="world", num_annotators=3, temperature=0.1,
                                              seed=0, output_dir=str(tmp_path / "sim")))
    assert sim["progress"]["judgements_open"] == 0 and sim["agreement_with_reward"] > 0.6
    with FeedbackStore(store) as s:
        models = {m for j in s.judgements("world") for m in j["model_ids"]}
    assert models == {"base-a", "base-b"}
    data = export(LabelExportConfig(store=store, project="world", output=str(tmp_path / "prefs.jsonl")))
    rm = reward_train(RewardConfig(model=base, data=str(data), output_dir=str(tmp_path / "rm"), max_steps=2,
                                   per_device_batch_size=4, max_length=96, eval_fraction=0.0,
                                   normalize="none", use_margin=True, learning_rate=1e-3))
    assert (Path(rm) / "config.json").exists()
    dpo = dpo_train(DPOConfig(model=base, data=str(data), output_dir=str(tmp_path / "dpo"), max_steps=2,
                              per_device_batch_size=4, max_length=96, eval_fraction=0.0,
                              eval_sample_prompts=0))
    assert (Path(dpo) / "config.json").exists()


def test_cli_collect_simulate_export(tmp_path):
    from conftest import run_cli

    responses = import_file(tmp_path, n_prompts=3)
    db = str(tmp_path / "fb.db")
    r = run_cli("-q", "collect", f"store={db}", "project=cli", f"responses={responses}",
                f"output_dir={tmp_path / 'c'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "'tasks_created': 3" in r.stdout
    r = run_cli("-q", "label", "simulate", f"store={db}", "project=cli", "reward=gold",
                f"output_dir={tmp_path / 's'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run_cli("-q", "label", "export", f"store={db}", "project=cli", f"output={tmp_path / 'o.jsonl'}",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 3
    r = run_cli("label", "export", f"store={db}", "project=ghost", f"output={tmp_path / 'x.jsonl'}",
                cwd=tmp_path)
    assert r.returncode == 2 and "unknown project 'ghost'" in r.stderr and "Traceback" not in r.stderr
