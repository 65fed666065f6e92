"""The pipeline's last step (detail 6 of :mod:`rlhfkit.pipeline`): every final policy sampled on
held-out prompts, the annotators' agreement, the reward-vs-KL frontier of every RL / DPO run, and
report.md with its plots."""

from __future__ import annotations

import json
from pathlib import Path


def evaluate_and_report(spec: dict) -> Path:
    """``spec``: the evaluate step's config (see ``plan._Planner.evaluate``). Returns report.md."""
    from rlhfkit.data.loading import read_records
    from rlhfkit.evaluate.policies import evaluate_policies
    from rlhfkit.evaluate.report import health_with_alarms, write_report

    prompts = [r["prompt"] for r in read_records(spec["prompts"])][: spec["num_prompts"]]
    evaluation = evaluate_policies(spec["policies"], prompts, reference="sft",
                                   reward_model=spec["reward_model"], gold=spec["gold"],
                                   num_samples=spec["num_samples"],
                                   max_new_tokens=spec["max_new_tokens"], seed=spec["seed"])
    out = Path(spec["output_dir"])
    reward_runs = {k: v for k, v in spec["runs"].items() if k.endswith("/reward")}
    runs = {k: v for k, v in spec["runs"].items() if k not in reward_runs}
    # The verdict on the samples, redone with each training run's alarms, so evaluation.json (and the
    # demo's printed table, read from it) says what the report says: a run whose collapse alarm fired
    # is not "healthy" because its final samples happen to look diverse enough.
    for name, h in health_with_alarms(evaluation, runs).items():
        evaluation["policies"][name]["health"] = h
    (out / "evaluate").mkdir(parents=True, exist_ok=True)
    (out / "evaluate" / "evaluation.json").write_text(json.dumps(evaluation, indent=2, default=str))
    return write_report(out, evaluation=evaluation, runs=runs, reward_runs=reward_runs,
                        agreement=agreement(spec["store"], spec["project"]), frontier=frontier_points(runs),
                        title=f"rlhfkit pipeline report: {out.name}",
                        feedback_sources=feedback_sources(spec))


def agreement(store_url: str, project: str) -> dict:
    """Inter-annotator agreement of the project's judgements, or why there is none."""
    from rlhfkit.feedback import agreement as A
    from rlhfkit.feedback.store import FeedbackStore

    js = FeedbackStore(store_url).judgements(project)
    records = [(j["task_id"], j["annotator"], j["choice"]) for j in js]
    per_task: dict = {}
    for task, _, _ in records:
        per_task[task] = per_task.get(task, 0) + 1
    out = {"judgements": len(js), "annotators": len({j["annotator"] for j in js}),
           "tasks_judged_twice_or_more": sum(n >= 2 for n in per_task.values())}
    if out["tasks_judged_twice_or_more"] == 0:
        # Agreement needs overlap: say why there is none rather than print empty statistics.
        out["note"] = "no task was judged by two annotators (collect.annotators_per_task = 1)"
        return out
    for name, fn in (("pairwise_agreement", A.pairwise_agreement), ("fleiss_kappa", A.fleiss_kappa),
                     ("krippendorff_alpha", A.krippendorff_alpha)):
        try:
            out[name] = fn(records)
        except (ValueError, ZeroDivisionError) as e:  # e.g. a single category in all answers
            out[name] = f"undefined ({e})"
    return out


def feedback_sources(spec: dict) -> list[str] | None:
    """The report's "Feedback sources" section (people vs AI judges and the export gate), or None
    when the project has no judge: without one there is nothing to calibrate, and the agreement
    section already covers people. The gate is the one the pipeline's export applied: the spec's
    ``judges`` / ``judge_margin`` / ``judge_min_tasks`` (the plan passes them when the pipeline has
    judges or its export section sets them), else `judges=calibrated` with the export's defaults."""
    from rlhfkit.feedback import calibration as C
    from rlhfkit.feedback.store import FeedbackStore

    with FeedbackStore(spec["store"]) as store:
        roles = C.roles_of(store)
        js = store.judgements(spec["project"])
    if not any(roles.get(j["annotator_id"]) == C.JUDGE_ROLE for j in js):
        return None
    cal = C.calibrate(js, roles, min_tasks=int(spec.get("judge_min_tasks", C.MIN_SHARED_TASKS)),
                      seed=int(spec.get("seed", 0)))
    return C.feedback_sources_markdown(cal, mode=spec.get("judges", "calibrated"),
                                       margin=float(spec.get("judge_margin", C.DEFAULT_MARGIN)))


def frontier_points(runs: dict[str, str]) -> list[dict]:
    """One (KL, gold, proxy) point per evaluation logged by each RL / DPO run: PPO logs
    eval_seq_kl / eval_gold / eval_proxy, DPO eval_kl / eval_gold."""
    from rlhfkit.train.common import read_metrics

    points = []
    for key, run in runs.items():
        name = key.split("/")[-1]
        if not (name.startswith("rl-") or name.startswith("dpo-")):
            continue
        for row in read_metrics(run):
            kl = row.get("eval_seq_kl", row.get("eval_kl"))
            if kl is None or "eval_gold" not in row:
                continue
            points.append({"method": name, "label": f"{key}@{row.get('step')}", "run": key,
                           "step": row.get("step"), "kl": kl, "gold": row["eval_gold"],
                           "proxy": row.get("eval_proxy")})
    return points
