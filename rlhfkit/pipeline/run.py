"""Executing a pipeline's plan (detail 3 of :mod:`rlhfkit.pipeline`): each step runs unless it
finished with the same fingerprint; a changed step's old run directory is moved aside first."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from rlhfkit.config import PipelineConfig
from rlhfkit.pipeline.plan import Plan, Step, build_plan
from rlhfkit.pipeline.state import PipelineState, step_fingerprints

log = logging.getLogger(__name__)


class Pipeline:
    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)

    def validate(self) -> Plan:
        """The plan, checked: every step's config built, every input path found (nothing runs)."""
        return build_plan(self.cfg)

    def run(self) -> dict:
        """Run (or continue) the whole plan; returns the SFT policy, the rounds' outputs, the final
        policies and, with an `evaluate` section, the report's path."""
        plan = self.validate()
        self.out.mkdir(parents=True, exist_ok=True)
        state = PipelineState(self.out / ".pipeline" / "state.json")
        fingerprints = step_fingerprints(plan.steps)
        outputs = {s.key: self._run_step(s, fingerprints[s.key], state) for s in plan.steps}
        result: dict[str, Any] = {"sft": plan.sft, "rounds": plan.rounds, "policies": plan.policies}
        if plan.report is not None:
            result["report"] = outputs[plan.report]
        (self.out / "pipeline_result.json").write_text(json.dumps(result, indent=2, default=str))
        return result

    def _run_step(self, step: Step, fp: str, state: PipelineState) -> str:
        if (rec := state.done(step.key, fp)) is not None:
            log.info("pipeline: %s is done (unchanged): skipped", step.key)
            return rec["output"]
        rec = state.records.get(step.key)
        if rec and rec.get("fingerprint") != fp and step.run_dir is not None and step.run_dir.exists():
            aside = step.run_dir.with_name(f"{step.run_dir.name}.changed-{time.strftime('%Y%m%d-%H%M%S')}")
            log.warning("pipeline: %s's config or inputs changed: its old run moves to %s", step.key, aside)
            step.run_dir.rename(aside)
        elif rec and not rec.get("done"):
            log.info("pipeline: %s was interrupted: continuing it", step.key)
        t0 = time.time()
        state.started(step.key, fp, t0)
        print(f"[pipeline] {step.key} ...", flush=True)
        produced = step.run(step.config)
        # A stage that returns a path returns its output (a training stage's final directory); one
        # that returns its summary (collect, label) wrote to the planned output, the store.
        output = str(produced) if isinstance(produced, (str, Path)) else step.output
        state.finished(step.key, fp, output, time.time() - t0,
                       result=produced if isinstance(produced, dict) else None)
        return output


def run_pipeline(cfg: PipelineConfig) -> Path:
    """`rlhf run`: validate, then run (or continue) the pipeline; returns the report or result path."""
    result = Pipeline(cfg).run()
    return Path(result.get("report") or Path(cfg.output_dir) / "pipeline_result.json")
