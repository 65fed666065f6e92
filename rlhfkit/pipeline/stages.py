"""The pipeline's steps as functions of one config each, returning what the step produced (a
path, or the stage's summary). Stages are imported when they run, so planning a pipeline (and
`rlhf run --help`) does not load torch."""

from __future__ import annotations

import time
from typing import Any

from rlhfkit.errors import RlhfkitError


def build_world(cfg) -> Any:
    from rlhfkit.synthetic.world import build

    return build(cfg)


def train_sft(cfg) -> Any:
    from rlhfkit.train.sft import train

    return train(cfg)


def collect(cfg) -> dict:
    from rlhfkit.feedback.collect import collect as run

    return run(cfg)  # the summary (prompts, responses, tasks created): recorded in the state file


def simulate_labels(cfg) -> dict:
    from rlhfkit.feedback.simulate import simulate_labels as run

    return run(cfg)


def judge_labels(cfg) -> dict:
    from rlhfkit.feedback.judges import judge_labels as run

    return run(cfg)  # summary.json (judgements, position consistency, ...): recorded in the state file


def export(cfg) -> Any:
    from rlhfkit.feedback.export import export as run

    return run(cfg)


def train_reward(cfg) -> Any:
    from rlhfkit.train.reward import train

    return train(cfg)


def train_ppo(cfg) -> Any:
    from rlhfkit.train.ppo import train

    return train(cfg)


def train_dpo(cfg) -> Any:
    from rlhfkit.train.dpo import train

    return train(cfg)


def wait_for_people(spec: dict) -> dict:
    """Labels from people through the web UI: wait (bounded) until the project holds `target`
    judgements of people (AI judges' judgements, made before, do not count); a re-run waits again."""
    from rlhfkit.feedback.store import FeedbackStore

    store, t0 = FeedbackStore(spec["store"]), time.time()
    print(f"[pipeline] waiting for {spec['target']} judgements of people in project '{spec['project']}' "
          f"(serve the UI with: rlhf label serve store={spec['store']})", flush=True)
    while True:
        judges = {a.name for a in store.list_annotators() if a.role == "judge"}
        per = store.progress(spec["project"])["per_annotator"]
        have = sum(n for name, n in per.items() if name not in judges)
        if have >= spec["target"]:
            return {"judgements": have}
        if time.time() - t0 > spec["timeout_seconds"]:
            raise RlhfkitError(f"pipeline: {have}/{spec['target']} judgements after "
                               f"{spec['timeout_seconds']:.0f} s; re-run to keep waiting")
        time.sleep(spec["poll_seconds"])


def evaluate(spec: dict) -> Any:
    from rlhfkit.pipeline.report import evaluate_and_report

    return evaluate_and_report(spec)
