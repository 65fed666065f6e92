"""The plan of a pipeline run (details 1, 2, 4, 5 and 7 of :mod:`rlhfkit.pipeline`): every step in
order, with its typed config, its run directory, the steps it reads and the path later steps read.

Building the plan is the validation. Each step's config is built with its stage's class from the
real paths it will use; a path that an earlier step of the plan creates (the world, the SFT model,
a round's preferences and reward model) is accepted as planned (:func:`rlhfkit.config.planned_paths`),
so nothing is created or run to check a pipeline file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from rlhfkit import config as C
from rlhfkit.errors import ConfigError
from rlhfkit.pipeline import stages
from rlhfkit.pipeline.checks import check_paths, check_tokenizer, substitute


@dataclass
class Step:
    """One stage run of the pipeline."""

    key: str  # "sft", "round1/collect", "round2/rl-ppo", "evaluate"
    run: Callable[[Any], Any]  # the stage, called with `config`
    config: Any  # its typed config (or, for a step without one, the dict that defines it)
    output: str  # what later steps read: a model directory, the feedback store, a file
    run_dir: Path | None = None  # moved aside when the step's fingerprint changes
    after: list[str] = field(default_factory=list)  # the steps whose outputs this one reads

    def inputs(self) -> Any:
        """What the step's fingerprint covers: its resolved config, which holds its input paths."""
        return self.config.model_dump(mode="json") if isinstance(self.config, BaseModel) else self.config


@dataclass
class Plan:
    steps: list[Step]
    sft: str  # the SFT policy (trained by the plan, or given)
    rounds: list[dict]  # per round: sampled_from, collect, preferences, reward
    policies: dict[str, str]  # final policy of each RL ("rl-<name>") and DPO ("dpo-<name>") run
    report: str | None  # the evaluate step's key, when there is one


def build_plan(cfg: C.PipelineConfig) -> Plan:
    """The validated plan of ``cfg``; raises ConfigError naming the section and key at fault."""
    planner = _Planner(cfg)
    check_paths(cfg, planner.world)
    check_tokenizer(cfg, planner.world)
    has_reward = cfg.reward is not None or any(r.reward_functions or r.reward_model for r in cfg.rl.values())
    if cfg.rl and not has_reward:
        raise ConfigError("pipeline: `rl` needs a reward: add a `reward` section (train a reward model) "
                          "or give reward_functions / reward_model in the rl entry")
    with C.planned_paths([planner.world] if planner.world else []) as planned:
        planner.planned = planned
        sft = planner.start()
        policies = {name: sft for name in cfg.rl}
        dpo: dict[str, str] = {}
        rounds, rm = [], None
        for r in range(1, cfg.rounds + 1):
            rounds.append(planner.round(r, sft, policies, dpo, rm))
            rm = rounds[-1].get("reward")
        finals = {**{f"rl-{k}": v for k, v in policies.items()}, **{f"dpo-{k}": v for k, v in dpo.items()}}
        report = planner.evaluate(sft, finals, rm) if cfg.evaluate is not None else None
    return Plan(planner.steps, sft, rounds, finals, report)


class _Planner:
    def __init__(self, cfg: C.PipelineConfig):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.world = str(self.out / "world") if cfg.world is not None else None
        self.store = str(self.out / "feedback.db")
        self.steps: list[Step] = []
        self.planned: set[str] = set()
        self.export_cfg: C.LabelExportConfig | None = None  # the last round's

    def section(self, name: str) -> dict:
        sec = getattr(self.cfg, name)
        return substitute(sec.overrides() if sec is not None else {}, self.world)

    def run_section(self, group: str, name: str) -> dict:
        return substitute(getattr(self.cfg, group)[name].overrides(), self.world)

    def config(self, where: str, cls: type, values: dict) -> Any:
        try:
            return C.config_from_dict(cls, values)
        except ConfigError as e:
            raise ConfigError(f"pipeline section '{where}': {e}") from None

    def add(self, step: Step) -> str:
        self.steps.append(step)
        self.planned.add(step.output)
        return step.output

    # ---- before the rounds --------------------------------------------------------------------
    def start(self) -> str:
        """The world (if any) and the SFT policy: trained here, or the one the file gives."""
        if self.world is not None:
            wcfg = self.config("world", C.SynthConfig, {**self.section("world"), "output_dir": self.world})
            self.add(Step("world", stages.build_world, wcfg, self.world))
        if self.cfg.sft is None:
            return str(self.cfg.policy)
        run_dir = self.out / "sft"
        scfg = self.config("sft", C.SFTConfig,
                           {**self.section("sft"), "output_dir": str(run_dir), "resume": True})
        return self.add(Step("sft", stages.train_sft, scfg, str(run_dir / "final"), run_dir, ["world"]))

    # ---- one round (details 4, 5 and 7) -------------------------------------------------------------
    def round(self, r: int, sft: str, policies: dict[str, str], dpo: dict[str, str],
              prev_rm: str | None) -> dict:
        rdir = self.out / f"round{r}"
        prev = [f"round{r - 1}/rl-{n}" for n in self.cfg.rl] if r > 1 else ["sft"]
        # The policy people see this round: the first RL method's latest policy (round 1: SFT).
        sampler = next(iter(policies.values()), sft) if r > 1 else sft
        ccfg = self.config("collect", C.CollectConfig, self._collect_values(sampler, r, prev_rm))
        out = {"round": r, "sampled_from": sampler,
               "collect": self.add(Step(f"round{r}/collect", stages.collect, ccfg, self.store, after=prev))}
        labelled = self._judges(r)
        labelled += self._label(r, after=[f"round{r}/collect", *labelled])
        ecfg = self.export_cfg = self.config("export", C.LabelExportConfig, {
            **self.section("export"), "store": self.store, "project": self.cfg.project,
            "output": str(rdir / "preferences.jsonl")})
        prefs = out["preferences"] = self.add(Step(f"round{r}/export", stages.export, ecfg, ecfg.output,
                                                   after=labelled))
        after = [f"round{r}/export"]
        rm = None
        if self.cfg.reward is not None:
            run_dir = rdir / "reward"
            rcfg = self.config("reward", C.RewardConfig, {"model": sft, **self.section("reward"),
                                                          "data": prefs, "output_dir": str(run_dir),
                                                          "resume": True})
            rm = out["reward"] = self.add(Step(f"round{r}/reward", stages.train_reward, rcfg,
                                               str(run_dir / "final"), run_dir, after))
        for name in self.cfg.rl:
            run_dir = rdir / f"rl-{name}"
            values = self._rl_values(name, policies[name], sft, rm, run_dir)
            pcfg = self.config(f"rl.{name}", C.PPOConfig, values)
            after_rl = [*after, f"round{r}/reward", *prev]
            policies[name] = self.add(Step(f"round{r}/rl-{name}", stages.train_ppo, pcfg,
                                           str(run_dir / "final"), run_dir, after_rl))
        for name in self.cfg.dpo:
            run_dir = rdir / f"dpo-{name}"
            dcfg = self.config(f"dpo.{name}", C.DPOConfig, {**self.run_section("dpo", name), "model": sft,
                                                            "data": prefs, "output_dir": str(run_dir),
                                                            "resume": True})
            dpo[name] = self.add(Step(f"round{r}/dpo-{name}", stages.train_dpo, dcfg, str(run_dir / "final"),
                                      run_dir, after))
        return out

    def _collect_values(self, sampler: str, r: int, prev_rm: str | None) -> dict:
        sec = self.section("collect")
        values = {**sec, "store": self.store, "project": self.cfg.project, "models": [sampler],
                  "seed": sec.get("seed", self.cfg.seed) + 1000 * (r - 1),
                  "output_dir": str(self.out / f"round{r}" / "collect")}
        if self.cfg.judge:
            values["annotators_per_task"] = self._annotators_per_task(sec.get("annotators_per_task"))
        if sec.get("select") == "uncertain":
            if prev_rm:
                values["selection_model"] = prev_rm
            else:  # round 1 has no reward model yet: random pairs
                values["select"] = "random"
        return values

    def _annotators_per_task(self, given: int | None) -> int:
        """Each task's slots: one per judge plus at least one person (none with `label: off`)."""
        judges = len(self.cfg.judge)
        need = judges + (self.cfg.label.mode != "off")
        if given is None:
            return need
        if given < need:
            people = "" if self.cfg.label.mode == "off" else " + 1 person"
            raise ConfigError(
                f"pipeline section 'collect': annotators_per_task = {given} leaves no room for the judges: "
                f"each of the {judges} judge(s) takes one slot of every task, so it must be at least "
                f"{judges}{people} = {need} (judges + 2 or more people for `export.judges: calibrated`)")
        return given

    def _judges(self, r: int) -> list[str]:
        """One step per AI judge (`round<r>/judge-<name>`), before the people's or simulated labelling:
        each judge takes its slot of every task of the round, people (or simulated people) the rest."""
        keys = []
        for name in self.cfg.judge:
            key = f"round{r}/judge-{name}"
            sec = self.run_section("judge", name)
            jcfg = self.config(f"judge.{name}", C.LabelJudgeConfig, {
                "name": name, **sec, "store": self.store, "project": self.cfg.project,
                "output_dir": str(self.out / f"round{r}" / f"judge-{name}")})
            self.add(Step(key, stages.judge_labels, jcfg, self.store, after=[f"round{r}/collect"]))
            keys.append(key)
        return keys

    def _label(self, r: int, after: list[str]) -> list[str]:
        """The label step (simulated people, or waiting for people), or none with mode 'off'."""
        label, key = self.cfg.label, f"round{r}/label"
        if label.mode == "off":
            return []
        if label.mode == "people":
            spec = {"store": self.store, "project": self.cfg.project, "target": label.target,
                    "poll_seconds": label.poll_seconds, "timeout_seconds": label.timeout_seconds}
            self.add(Step(key, stages.wait_for_people, spec, self.store, after=after))
            return [key]
        sec = {k: v for k, v in self.section("label").items() if k != "mode"}
        lcfg = self.config("label", C.LabelSimulateConfig, {
            **sec, "store": self.store, "project": self.cfg.project,
            "seed": sec.get("seed", self.cfg.seed) + 1000 * (r - 1),
            "output_dir": str(self.out / f"round{r}" / "label")})
        self.add(Step(key, stages.simulate_labels, lcfg, self.store, after=after))
        return [key]

    def _rl_values(self, name: str, model: str, ref: str, rm: str | None, run_dir: Path) -> dict:
        sec = self.run_section("rl", name)
        # RL prompts default to the prompts people compare completions of.
        values = {"data": self.section("collect").get("prompts"), **sec, "model": model,
                  "output_dir": str(run_dir), "resume": True}
        if ref != model:
            values["ref_model"] = ref
        if rm and not sec.get("reward_functions") and not sec.get("reward_model"):
            values["reward_model"] = rm
        return values

    # ---- after the rounds (detail 6) ----------------------------------------------------------------
    def evaluate(self, sft: str, finals: dict[str, str], rm: str | None) -> str:
        sec = self.section("evaluate")
        policies = {"sft": sft, **finals}
        if self.world:
            policies = {"base": str(Path(self.world) / "base"), **policies}
        runs = {s.key: str(s.run_dir) for s in self.steps if s.run_dir is not None
                and (s.key == "sft" or "/rl-" in s.key or "/dpo-" in s.key or s.key.endswith("/reward"))}
        try:  # the user's gold (a directory may be one the plan makes); by default the world's, if any
            gold = C.check_gold_spec(sec.get("gold", "synthetic" if self.world else None), "gold")
        except ValueError as e:
            raise ConfigError(f"pipeline section 'evaluate': {e}") from None
        spec = {"policies": policies, "reward_model": rm, "gold": gold,
                "prompts": sec.get("prompts") or self.section("collect")["prompts"],
                "num_prompts": int(sec.get("num_prompts", 100)),
                "num_samples": int(sec.get("num_samples", 1)),
                "max_new_tokens": int(sec.get("max_new_tokens", 48)), "seed": self.cfg.seed,
                "output_dir": str(self.out), "runs": runs, "store": self.store, "project": self.cfg.project}
        ex = self.export_cfg
        if self.cfg.judge or {"judges", "judge_margin", "judge_min_tasks"} & set(self.section("export")):
            # The report's feedback-sources section shows the gate the export applied (only then:
            # an unchanged spec keeps the evaluate step of a pipeline without judges finished).
            spec.update(judges=ex.judges, judge_margin=ex.judge_margin, judge_min_tasks=ex.judge_min_tasks)
        self.add(Step("evaluate", stages.evaluate, spec, str(self.out / "report.md"), self.out / "evaluate",
                      sorted(s.key for s in self.steps)))
        return "evaluate"
