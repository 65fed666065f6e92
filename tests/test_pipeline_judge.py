"""The pipeline's `judge:` section (AI judges beside or instead of people) and the CLI's Ctrl-C hint.

- the plan puts one step per judge and round after collect and before labelling, with the judge's
  config, and leaves each task a slot per judge (or says clearly that it cannot);
- a tiny pipeline with a good and an anti-gold function judge beside simulated labelers: the judges'
  judgements are in the store, `export.judges: calibrated` keeps the good one and drops the other,
  report.md has the Feedback sources section with that gate, and a re-run skips the judge steps;
- waiting for people counts people's judgements only (judges answer before them);
- Ctrl-C suggests `resume=true` only for stages that have that key.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhfkit.config import LabelJudgeConfig, PipelineConfig, config_from_dict
from rlhfkit.errors import ConfigError
from rlhfkit.pipeline import Pipeline, build_plan
from rlhfkit.synthetic.gold import gold_reward_fn

pytestmark = [pytest.mark.xdist_group("pipeline"), pytest.mark.usefixtures("one_thread")]
GOLD = "rlhfkit.synthetic.gold:gold_reward_fn"


def anti_gold(prompts, completions, **kwargs):
    """A judge that prefers what the gold reward dislikes: the calibration gate must drop it."""
    return [-s for s in gold_reward_fn(prompts, completions)]


def fn_judge(function: str) -> dict:
    return {"judge": {"kind": "function", "function": function, "mode": "pointwise"}}


def judge_pipeline(world: Path, policy: Path, out: Path, **kw) -> dict:
    spec = {
        "output_dir": str(out), "project": "j", "policy": str(policy),
        "collect": {"prompts": str(world / "prompts.jsonl"), "max_prompts": 8, "num_samples": 3,
                    "pairs_per_prompt": 2, "max_new_tokens": 16},
        "label": {"mode": "simulate", "num_annotators": 2, "temperature": 0.0},
        "judge": {"gold": fn_judge(GOLD), "anti": fn_judge(f"{__name__}:anti_gold")},
        "export": {"judges": "calibrated", "judge_margin": 0.2, "judge_min_tasks": 4},
        "rl": {"grpo": {"estimator": "grpo", "reward_functions": ["gold"], "learning_rate": 5e-4,
                        "prompts_per_device": 2, "num_samples": 2, "mini_batch_size": 4,
                        "max_new_tokens": 8, "max_length": 64, "max_steps": 1, "eval_prompts": 0,
                        "save_every": 1, "log_every": 1}},
        "evaluate": {"num_prompts": 4, "num_samples": 1, "max_new_tokens": 8, "gold": "synthetic"},
    }
    spec.update(kw)
    return spec


def plan_of(spec: dict):
    return build_plan(config_from_dict(PipelineConfig, spec))


def test_plan_has_a_step_per_judge_and_round_between_collect_and_label(world, tmp_path):
    out = tmp_path / "p"
    plan = plan_of(judge_pipeline(world, world / "base", out, rounds=2))
    keys = [s.key for s in plan.steps]
    for r in (1, 2):
        i = keys.index(f"round{r}/collect")
        assert keys[i:i + 5] == [f"round{r}/collect", f"round{r}/judge-gold", f"round{r}/judge-anti",
                                 f"round{r}/label", f"round{r}/export"], keys
    steps = {s.key: s for s in plan.steps}
    judge = steps["round2/judge-anti"]
    assert isinstance(judge.config, LabelJudgeConfig)
    assert judge.config.name == "anti" and judge.config.project == "j"
    assert judge.config.store == str(out / "feedback.db") == judge.output
    assert judge.config.output_dir == str(out / "round2" / "judge-anti")
    assert judge.config.judge.function == f"{__name__}:anti_gold" and judge.config.judge.mode == "pointwise"
    assert judge.after == ["round2/collect"]
    assert steps["round1/label"].after == ["round1/collect", "round1/judge-gold", "round1/judge-anti"]
    assert steps["round1/export"].after == ["round1/judge-gold", "round1/judge-anti", "round1/label"]
    # a slot per judge plus one person, when annotators_per_task is not given
    assert steps["round1/collect"].config.annotators_per_task == 3
    # the report shows the gate the export applies
    ev = steps["evaluate"].config
    assert (ev["judges"], ev["judge_margin"], ev["judge_min_tasks"]) == ("calibrated", 0.2, 4)


def test_plan_judges_instead_of_label_and_room_for_them(world, tmp_path):
    out = tmp_path / "p"
    base = judge_pipeline(world, world / "base", out)
    # `label: null` (or mode off): the judges label alone, each taking one slot
    for label in (None, False, {"mode": "off"}, {"mode": False}):  # False: YAML reads a bare `off` so
        plan = plan_of({**base, "label": label})
        keys = [s.key for s in plan.steps]
        assert "round1/label" not in keys and keys.index("round1/judge-anti") < keys.index("round1/export")
        steps = {s.key: s for s in plan.steps}
        assert steps["round1/export"].after == ["round1/judge-gold", "round1/judge-anti"]
        assert steps["round1/collect"].config.annotators_per_task == 2
    # too few slots for 2 judges + 1 person: an error naming the key, before anything runs
    with pytest.raises(ConfigError, match="annotators_per_task = 2 leaves no room"):
        plan_of({**base, "collect": {**base["collect"], "annotators_per_task": 2}})
    assert not out.exists()
    with pytest.raises(ConfigError, match="needs a `judge` section"):
        plan_of({**base, "label": None, "judge": {}})
    with pytest.raises(ConfigError, match="judge.function"):
        plan_of({**base, "judge": {"bad": {"judge": {"kind": "function", "mode": "pointwise"}}}})
    with pytest.raises(ConfigError, match="set by the pipeline"):
        plan_of({**base, "judge": {"g": {**fn_judge(GOLD), "store": "x.db"}}})
    # without judges nothing changes: no judge keys reach collect or the report (same fingerprints)
    plain = plan_of({**base, "judge": {}, "export": {}})
    steps = {s.key: s for s in plain.steps}
    assert "annotators_per_task" not in steps["round1/collect"].config.model_fields_set
    assert "judges" not in steps["evaluate"].config


def test_pipeline_with_function_judges_beside_simulated_labelers(world, sft_model, tmp_path):
    from rlhfkit.feedback.store import FeedbackStore

    out = tmp_path / "p"
    spec = judge_pipeline(world, sft_model, out)
    spec["collect"]["annotators_per_task"] = 4  # 2 judges + 2 people: the human-human kappa needs two
    cfg = config_from_dict(PipelineConfig, spec)
    result = Pipeline(cfg).run()
    store = FeedbackStore(str(out / "feedback.db"))
    roles = {a.name: a.role for a in store.list_annotators()}
    assert roles["gold"] == roles["anti"] == "judge" and roles["sim-1"] != "judge"
    js = store.judgements("j")
    tasks = {t["task_id"] for t in store.tasks("j")}
    by = {name: {j["task_id"] for j in js if j["annotator"] == name} for name in ("gold", "anti", "sim-1")}
    assert len(by["gold"]) >= len(tasks) - 2 and len(by["anti"]) >= len(tasks) - 2  # exact ties are skipped
    assert by["sim-1"] == tasks  # the people's slots were left free: every task got both simulated labelers
    state = json.loads((out / ".pipeline" / "state.json").read_text())
    assert state["round1/judge-gold"]["done"] and state["round1/judge-gold"]["result"]["judgements"] > 0
    # the export gate: the anti-gold judge's labels are dropped, the gold judge's kept
    rows = [json.loads(ln) for ln in Path(result["rounds"][0]["preferences"]).read_text().splitlines()]
    annotators = {r["annotator"] for r in rows}
    assert "gold" in annotators and "anti" not in annotators and "sim-1" in annotators
    report = Path(result["report"]).read_text()
    assert "## Feedback sources" in report
    gate = next(ln for ln in report.splitlines() if ln.startswith("Export gate"))
    assert "judges=calibrated, judge_margin=0.2" in gate and "kept gold" in gate and "dropped anti" in gate

    # a re-run skips the finished judge steps: same records, no new judgements
    Pipeline(cfg).run()
    again = json.loads((out / ".pipeline" / "state.json").read_text())
    for key in ("round1/judge-gold", "round1/judge-anti", "round1/label", "round1/export"):
        assert again[key] == state[key], key
    assert len(store.judgements("j")) == len(js)


def test_interrupted_stage_hint_depends_on_resume(monkeypatch, capsys, tmp_path):
    """Ctrl-C names `resume=true` only for stages that have that key; others continue by a re-run."""
    from rlhfkit import cli

    assert cli.continue_hint("sft") == "rerun with resume=true to continue"
    assert cli.continue_hint("label judge") == "rerun the same command to continue"
    assert cli.continue_hint("run") == "rerun the same command to continue"

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_resolve", lambda target: interrupted)
    code = cli.main(["label", "judge", f"store={tmp_path / 'f.db'}", "project=p", "judge.kind=function",
                     f"judge.function={GOLD}", "judge.mode=pointwise"])
    err = capsys.readouterr().err
    assert code == 130 and "rerun the same command" in err and "resume=true" not in err


def test_waiting_for_people_counts_only_people(tmp_path):
    """`label: {mode: people, target: N}` waits for N judgements of people: the judges, which answer
    first, do not count towards it."""
    from rlhfkit.errors import RlhfkitError
    from rlhfkit.feedback.store import FeedbackStore
    from rlhfkit.pipeline import stages

    db = tmp_path / "fb.db"
    with FeedbackStore(db) as s:
        s.create_project("p", annotators_per_task=3)
        judge = s.add_annotator("j", "judge-password", role="judge")
        person = s.add_annotator("alice", "alice-password", role="annotator")
        tasks = []
        for i in range(2):
            pid = s.add_prompt("p", f"prompt {i}")
            rids = [s.add_response(pid, f"answer {i} by {m}", m) for m in ("m1", "m2")]
            tasks.append((s.create_task("p", rids), rids))
        for tid, rids in tasks:
            s.submit(tid, judge.id, choice="A", displayed_order=rids)
        s.submit(tasks[0][0], person.id, choice="B", displayed_order=tasks[0][1])
    spec = {"store": str(db), "project": "p", "poll_seconds": 0.01, "timeout_seconds": 0.05}
    assert stages.wait_for_people({**spec, "target": 1}) == {"judgements": 1}
    with pytest.raises(RlhfkitError, match="1/2 judgements"):  # 3 judgements, but 1 of people
        stages.wait_for_people({**spec, "target": 2})
