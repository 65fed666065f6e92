"""`rlhf run PIPELINE.yaml`: the whole loop from one file, in rounds.

    world? -> sft? -> [collect -> label -> export -> reward -> rl... / dpo...] x rounds -> evaluate -> report

Implementation details:
1. Stages connect through files only: each writes its own run directory under `output_dir`
   (`sft/`, `round1/reward/`, `round1/rl-ppo/`, ...); the feedback store (`feedback.db`) holds the
   comparisons of every round, so "all data so far" is one export of the project.
2. Everything is checked before anything runs: unknown keys (pipeline or stage), input paths that
   do not exist, a tokenizer whose vocabulary does not fit the model's embedding. Each stage's
   config is built with its real class, so a typo fails here, naming the stage and the key.
3. Re-running skips finished stages: `.pipeline/state.json` records a fingerprint per stage (its
   resolved config, which holds its input paths, plus the fingerprints of its inputs). A finished
   stage with the same fingerprint is skipped; an interrupted one resumes (training stages run with
   `resume: true`, collection and labelling are idempotent); a changed one runs again after its old
   run directory is moved aside (nothing is deleted).
4. Rounds (iterated online RLHF, Bai et al. 2022 §4.5): round r collects samples from the policy of
   round r-1 (round 1: the SFT model), labels them, retrains the reward model on all comparisons so
   far (from the SFT weights), and continues each RL method from its own previous policy with the
   KL still anchored to the SFT model (`ref_model`). DPO is offline: it retrains from SFT on all
   comparisons so far.
5. Active selection (`collect.select: uncertain`, rounds >= 2): the previous round's reward model
   picks the candidate pairs it is least sure about (see rlhfkit/feedback/collect.py).
6. Evaluation samples every final policy on held-out prompts with the same seed and compares it
   with the SFT model (gold win-rate, KL, reward-model score); the frontier has one point per
   evaluation of every RL / DPO run (their metrics.jsonl), and report.md + PNGs are written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlhfkit.config import PipelineConfig
from rlhfkit.errors import ConfigError, RlhfkitError

log = logging.getLogger(__name__)

WORLD = "${world}"
# Keys whose values are input paths the user gives (checked before anything runs).
PATH_KEYS = ("model", "tokenizer", "data", "eval_data", "prompts", "responses", "reward_model", "value_model",
             "ref_model", "guidelines")
MODEL_KEYS = ("model", "tokenizer", "reward_model", "value_model", "ref_model")


def _subst(value: Any, world: str | None) -> Any:
    if isinstance(value, str) and WORLD in value:
        if world is None:
            raise ConfigError(f"'{value}' refers to ${{world}} but the pipeline has no `world` section")
        return value.replace(WORLD, world)
    if isinstance(value, dict):
        return {k: _subst(v, world) for k, v in value.items()}
    if isinstance(value, list):
        return [_subst(v, world) for v in value]
    return value


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Pipeline:
    """A planned pipeline: `steps` is the ordered list of (key, fingerprint inputs, runner)."""

    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.world = str(self.out / "world") if cfg.world is not None else None
        self.state_path = self.out / ".pipeline" / "state.json"
        self.state: dict[str, dict] = {}
        self.outputs: dict[str, str] = {}
        self.prints: list[str] = []

    # ---- section access -------------------------------------------------------------------
    def section(self, name: str) -> dict:
        raw = getattr(self.cfg, name)
        return _subst(raw.overrides() if raw is not None else {}, self.world)

    @property
    def store(self) -> str:
        return str(self.out / "feedback.db")

    # ---- validation (detail 2 above) --------------------------------------------------------------
    def validate(self) -> None:
        from rlhfkit import config as C

        placeholder = tempfile.mkdtemp(prefix="rlhfkit-validate-")
        try:
            self._check_owned_keys()
            self._check_paths()
            self._check_tokenizer()
            p = placeholder
            if self.world is not None:  # the world is not built yet: its paths point at the placeholder
                self.world = p
                for where, value in self._user_paths():
                    if value.startswith(p) and where.rsplit(".", 1)[-1] in MODEL_KEYS:
                        Path(value).mkdir(parents=True, exist_ok=True)
            checks: list[tuple[str, type, dict]] = []
            if self.cfg.world is not None:
                checks.append(("world", C.SynthConfig, {**self.section("world"), "output_dir": p}))
            if self.cfg.sft is not None:
                checks.append(("sft", C.SFTConfig, {"model": p, "data": p, **self.section("sft"), "output_dir": p}))
            checks.append(("collect", C.CollectConfig, self._collect_kwargs([p], round_=1, placeholder=p)))
            if self.cfg.label.mode == "simulate":
                checks.append(("label", C.LabelSimulateConfig, self._simulate_kwargs(1)))
            checks.append(("export", C.LabelExportConfig, self._export_kwargs(Path(p) / "x.jsonl")))
            if self.cfg.reward is not None:
                checks.append(("reward", C.RewardConfig, self._reward_kwargs(p, p, p)))
            for name in self.cfg.rl:
                checks.append((f"rl.{name}", C.PPOConfig, self._rl_kwargs(name, p, p, p, p)))
            for name in self.cfg.dpo:
                checks.append((f"dpo.{name}", C.DPOConfig, self._dpo_kwargs(name, p, p, p)))
            for where, cls, kwargs in checks:
                try:
                    C.config_from_dict(cls, kwargs)
                except ConfigError as e:
                    raise ConfigError(f"pipeline section '{where}': {e}") from None
            if self.cfg.rl and self.cfg.reward is None and not any(
                    r.reward_functions or r.reward_model for r in self.cfg.rl.values()):
                raise ConfigError("pipeline: `rl` needs a reward: add a `reward` section (train a reward model) "
                                  "or give reward_functions / reward_model in the rl entry")
        finally:
            self.world = str(self.out / "world") if self.cfg.world is not None else None
            shutil.rmtree(placeholder, ignore_errors=True)

    def _check_owned_keys(self) -> None:
        """The pipeline places every stage's run directory and the feedback store itself (detail 1 above);
        a section that sets them would be silently overridden, so it is an error instead."""
        owned = {"output_dir", "store", "project"}
        sections = [(n, self.section(n)) for n in ("world", "sft", "collect", "label", "reward", "evaluate")]
        for group in ("rl", "dpo"):
            sections += [(f"{group}.{run}", sec.overrides()) for run, sec in getattr(self.cfg, group).items()]
        for where, sec in sections:
            for key in sorted(owned & set(sec or {})):
                raise ConfigError(f"pipeline section '{where}': `{key}` is set by the pipeline "
                                  f"(run directories live under output_dir = {self.cfg.output_dir}); remove it")

    def _user_paths(self) -> list[tuple[str, str]]:
        found = []
        for name in ("sft", "collect", "reward", "evaluate", "label"):
            for key, value in self.section(name).items():
                if key in PATH_KEYS and isinstance(value, str):
                    found.append((f"{name}.{key}", value))
        for group in ("rl", "dpo"):
            for run, sec in getattr(self.cfg, group).items():
                for key, value in _subst(sec.overrides(), self.world).items():
                    if key in PATH_KEYS and isinstance(value, str):
                        found.append((f"{group}.{run}.{key}", value))
        if self.cfg.policy:
            found.append(("policy", self.cfg.policy))
        return found

    def _check_paths(self) -> None:
        for where, value in self._user_paths():
            if self.world and value.startswith(self.world):
                continue  # made by the pipeline's own world stage
            looks_local = value.startswith(("/", ".", "~")) or value.count("/") > 1 or os.sep in value \
                or value.endswith((".jsonl", ".json", ".csv", ".parquet", ".md", ".yaml"))
            if looks_local and not Path(os.path.expanduser(value)).exists():
                raise ConfigError(f"pipeline: {where} = '{value}' does not exist")

    def _check_tokenizer(self) -> None:
        """The policy's tokenizer must fit its embedding (a common mistake: a tokenizer from
        another model family). Checked on configs only; no weights are loaded."""
        sft = self.section("sft")
        model = sft.get("model") or self.cfg.policy
        if not model or (self.world and model.startswith(self.world)) or not Path(model).exists():
            return
        tokenizer = sft.get("tokenizer") or model
        from transformers import AutoConfig, AutoTokenizer

        try:
            mcfg = AutoConfig.from_pretrained(model)
            tok = AutoTokenizer.from_pretrained(tokenizer)
        except (OSError, ValueError) as e:
            raise ConfigError(f"pipeline: cannot read model/tokenizer '{model}' / '{tokenizer}': {e}") from None
        vocab = getattr(mcfg, "vocab_size", None) or getattr(mcfg.get_text_config(), "vocab_size", None)
        if vocab is not None and len(tok) > vocab + 1:  # +1: rlhfkit adds a pad token when there is none
            raise ConfigError(f"pipeline: tokenizer '{tokenizer}' has {len(tok)} tokens but model '{model}' has "
                              f"an embedding of {vocab}: they do not belong together (sft.tokenizer / sft.model)")

    # ---- stage keyword builders (one place, used by validation and by the run) ----------------
    def _collect_kwargs(self, models: list[str], round_: int, placeholder: str | None = None,
                        selection_model: str | None = None) -> dict:
        sec = self.section("collect")
        kw = {**sec, "store": self.store, "project": self.cfg.project, "models": models,
              "seed": sec.get("seed", self.cfg.seed) + 1000 * (round_ - 1),
              "output_dir": str(self.out / f"round{round_}" / "collect")}
        if sec.get("select") == "uncertain":
            if selection_model:
                kw["selection_model"] = selection_model
            elif placeholder:
                kw["selection_model"] = placeholder
            else:  # round 1 has no reward model yet: random pairs
                kw["select"] = "random"
        return kw

    def _simulate_kwargs(self, round_: int) -> dict:
        sec = {k: v for k, v in self.section("label").items() if k not in ("mode", "target", "poll_seconds",
                                                                           "timeout_seconds")}
        return {**sec, "store": self.store, "project": self.cfg.project,
                "seed": sec.get("seed", self.cfg.seed) + 1000 * (round_ - 1),
                "output_dir": str(self.out / f"round{round_}" / "label")}

    def _export_kwargs(self, output: Path) -> dict:
        return {**self.section("export"), "store": self.store, "project": self.cfg.project,
                "output": str(output)}

    def _reward_kwargs(self, model: str, data: str, out: str) -> dict:
        return {"model": model, **self.section("reward"), "data": data, "output_dir": out, "resume": True}

    def _rl_kwargs(self, name: str, model: str, ref: str, rm: str | None, out: str) -> dict:
        sec = _subst(self.cfg.rl[name].overrides(), self.world)
        kw = {"data": self.section("collect").get("prompts"), **sec, "model": model, "output_dir": out,
              "resume": True}  # RL prompts default to the prompts people compare completions of
        if ref != model:
            kw["ref_model"] = ref
        if rm and not sec.get("reward_functions") and not sec.get("reward_model"):
            kw["reward_model"] = rm
        return kw

    def _dpo_kwargs(self, name: str, model: str, data: str, out: str) -> dict:
        sec = _subst(self.cfg.dpo[name].overrides(), self.world)
        return {**sec, "model": model, "data": data, "output_dir": out, "resume": True}

    # ---- state (detail 3 above) --------------------------------------------------------------------
    def _load_state(self) -> None:
        if self.state_path.is_file():
            try:
                self.state = json.loads(self.state_path.read_text())
            except json.JSONDecodeError:
                log.warning("%s is unreadable; every stage is checked again", self.state_path)
                self.state = {}

    def _save_state(self) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2))
        os.replace(tmp, self.state_path)

    def step(self, key: str, inputs: dict, run_dir: Path | None, runner: Callable[[], Any]) -> str:
        """Run one stage unless it finished with the same fingerprint. Returns its output path."""
        fp = _fingerprint({"inputs": inputs, "upstream": [self.state.get(k, {}).get("fingerprint")
                                                           for k in inputs.get("_after", [])]})
        rec = self.state.get(key)
        if rec and rec.get("fingerprint") == fp and rec.get("done") and Path(rec["output"]).exists():
            log.info("pipeline: %s is done (unchanged): skipped", key)
            self.outputs[key] = rec["output"]
            return rec["output"]
        if rec and rec.get("fingerprint") != fp and run_dir is not None and run_dir.exists():
            aside = run_dir.with_name(f"{run_dir.name}.changed-{time.strftime('%Y%m%d-%H%M%S')}")
            log.warning("pipeline: %s's config or inputs changed: its old run moves to %s", key, aside)
            run_dir.rename(aside)
        elif rec and not rec.get("done"):
            log.info("pipeline: %s was interrupted: continuing it", key)
        self.state[key] = {"fingerprint": fp, "done": False, "started": time.time()}
        self._save_state()
        print(f"[pipeline] {key} ...", flush=True)
        t0 = time.time()
        output = str(runner())
        self.state[key] = {"fingerprint": fp, "done": True, "output": output, "seconds": round(time.time() - t0, 1)}
        self._save_state()
        self.outputs[key] = output
        return output

    # ---- the run -----------------------------------------------------------------------------
    def run(self) -> dict:
        from rlhfkit import config as C

        self.validate()
        self.out.mkdir(parents=True, exist_ok=True)
        self._load_state()

        if self.cfg.world is not None:
            from rlhfkit.synthetic.world import build
            wcfg = C.config_from_dict(C.SynthConfig, {**self.section("world"), "output_dir": self.world})
            self.step("world", {"config": wcfg.model_dump(mode="json")}, None, lambda: build(wcfg))
        if self.cfg.sft is not None:
            from rlhfkit.train.sft import train as sft_train
            scfg = C.config_from_dict(C.SFTConfig, {**self.section("sft"), "output_dir": str(self.out / "sft"),
                                                   "resume": True})
            sft = self.step("sft", {"config": scfg.model_dump(mode="json"), "_after": ["world"]},
                            self.out / "sft", lambda: sft_train(scfg))
        else:
            sft = str(self.cfg.policy)
        policies: dict[str, str] = {name: sft for name in self.cfg.rl}
        dpo_out: dict[str, str] = {}
        rm: str | None = None
        rounds = []
        for r in range(1, self.cfg.rounds + 1):
            rounds.append(self._round(r, sft, policies, dpo_out, rm))
            rm = rounds[-1].get("reward")
        result = {"sft": sft, "rounds": rounds, "policies": {**{f"rl-{k}": v for k, v in policies.items()},
                                                             **{f"dpo-{k}": v for k, v in dpo_out.items()}}}
        if self.cfg.evaluate is not None:
            result["report"] = self.step("evaluate", {"policies": result["policies"], "sft": sft, "rm": rm,
                                                      "config": self.section("evaluate"),
                                                      "_after": sorted(self.outputs)},
                                         self.out / "evaluate", lambda: self._evaluate(sft, result, rm))
        (self.out / "pipeline_result.json").write_text(json.dumps(result, indent=2, default=str))
        return result

    def _round(self, r: int, sft: str, policies: dict[str, str], dpo_out: dict[str, str], prev_rm: str | None) -> dict:
        from rlhfkit import config as C
        from rlhfkit.feedback.collect import collect
        from rlhfkit.feedback.export import export

        rdir = self.out / f"round{r}"
        prev = [f"round{r - 1}/rl-{n}" for n in self.cfg.rl] if r > 1 else ["sft"]
        # The policy people see this round: the first RL method's latest policy (round 1: SFT).
        sampler = next(iter(policies.values()), sft) if r > 1 else sft
        ccfg = C.config_from_dict(C.CollectConfig, self._collect_kwargs([sampler], r, selection_model=prev_rm))
        out = {"round": r, "sampled_from": sampler}
        out["collect"] = self.step(f"round{r}/collect", {"config": ccfg.model_dump(mode="json"), "_after": prev},
                                   None, lambda: json.dumps(collect(ccfg), default=str) and self.store)
        label = self.section("label")
        if label.get("mode", "simulate") == "simulate":
            from rlhfkit.feedback.simulate import simulate_labels
            lcfg = C.config_from_dict(C.LabelSimulateConfig, self._simulate_kwargs(r))
            self.step(f"round{r}/label", {"config": lcfg.model_dump(mode="json"), "_after": [f"round{r}/collect"]},
                      None, lambda: simulate_labels(lcfg) and self.store)
        else:
            self.step(f"round{r}/label", {"target": label.get("target"), "_after": [f"round{r}/collect"]}, None,
                      lambda: self._wait_for_people(label))
        ecfg = C.config_from_dict(C.LabelExportConfig, self._export_kwargs(rdir / "preferences.jsonl"))
        prefs = self.step(f"round{r}/export", {"config": ecfg.model_dump(mode="json"),
                                               "_after": [f"round{r}/label"]}, None, lambda: export(ecfg))
        out["preferences"] = prefs
        after = [f"round{r}/export"]
        rm = None
        if self.cfg.reward is not None:
            from rlhfkit.train.reward import train as rm_train
            rcfg = C.config_from_dict(C.RewardConfig, self._reward_kwargs(sft, prefs, str(rdir / "reward")))
            rm = self.step(f"round{r}/reward", {"config": rcfg.model_dump(mode="json"), "_after": after},
                           rdir / "reward", lambda: rm_train(rcfg))
            out["reward"] = rm
        for name in self.cfg.rl:
            from rlhfkit.train.ppo import train as ppo_train
            pcfg = C.config_from_dict(C.PPOConfig, self._rl_kwargs(name, policies[name], sft, rm,
                                                                     str(rdir / f"rl-{name}")))
            policies[name] = self.step(f"round{r}/rl-{name}", {"config": pcfg.model_dump(mode="json"),
                                                               "_after": after + [f"round{r}/reward"] + prev},
                                       rdir / f"rl-{name}", lambda: ppo_train(pcfg))
        for name in self.cfg.dpo:
            from rlhfkit.train.dpo import train as dpo_train
            dcfg = C.config_from_dict(C.DPOConfig, self._dpo_kwargs(name, sft, prefs, str(rdir / f"dpo-{name}")))
            dpo_out[name] = self.step(f"round{r}/dpo-{name}", {"config": dcfg.model_dump(mode="json"),
                                                               "_after": after}, rdir / f"dpo-{name}",
                                      lambda: dpo_train(dcfg))
        return out

    def _wait_for_people(self, label: dict) -> str:
        """Labels from people through the web UI: wait (bounded) until the project holds `target` judgements."""
        from rlhfkit.feedback.store import FeedbackStore

        target = int(label.get("target") or 0)
        if target <= 0:
            raise ConfigError("pipeline: label.mode 'people' needs label.target (number of judgements to wait for)")
        poll, limit = float(label.get("poll_seconds", 10)), float(label.get("timeout_seconds", 86400))
        store, t0 = FeedbackStore(self.store), time.time()
        print(f"[pipeline] waiting for {target} judgements in project '{self.cfg.project}' "
              f"(serve the UI with: rlhf label serve store={self.store})", flush=True)
        while True:
            have = store.progress(self.cfg.project)["judgements"]
            if have >= target:
                return self.store
            if time.time() - t0 > limit:
                raise RlhfkitError(f"pipeline: {have}/{target} judgements after {limit:.0f} s; re-run to keep waiting")
            time.sleep(poll)

    # ---- evaluation and report (detail 6 above) ---------------------------------------------------------
    def _evaluate(self, sft: str, result: dict, rm: str | None) -> str:
        from rlhfkit.data.loading import read_records
        from rlhfkit.evaluate.policies import evaluate_policies
        from rlhfkit.evaluate.report import write_report

        sec = self.section("evaluate")
        prompts = [r["prompt"] for r in read_records(sec.get("prompts") or self.section("collect")["prompts"])]
        prompts = prompts[: int(sec.get("num_prompts", 100))]
        policies = {"sft": sft, **result["policies"]}
        if self.world:
            policies = {"base": str(Path(self.world) / "base"), **policies}
        gold = bool(sec.get("gold", self.world is not None))
        evaluation = evaluate_policies(policies, prompts, reference="sft", reward_model=rm, gold=gold,
                                       num_samples=int(sec.get("num_samples", 1)),
                                       max_new_tokens=int(sec.get("max_new_tokens", 48)), seed=self.cfg.seed)
        out = self.out / "evaluate"
        out.mkdir(parents=True, exist_ok=True)
        (out / "evaluation.json").write_text(json.dumps(evaluation, indent=2, default=str))
        runs = {k: str(Path(v).parent) for k, v in self.outputs.items()
                if "/rl-" in k or "/dpo-" in k or "/reward" in k or k == "sft"}
        reward_runs = {k: v for k, v in runs.items() if k.endswith("/reward")}
        runs = {k: v for k, v in runs.items() if k not in reward_runs}
        report = write_report(self.out, evaluation=evaluation, runs=runs, reward_runs=reward_runs,
                              agreement=self._agreement(), frontier=frontier_points(runs),
                              title=f"rlhfkit pipeline report: {self.out.name}")
        return str(report)

    def _agreement(self) -> dict | None:
        from rlhfkit.feedback import agreement as A
        from rlhfkit.feedback.store import FeedbackStore

        js = FeedbackStore(self.store).judgements(self.cfg.project)
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
            points.append({"method": name, "label": f"{key}@{row.get('step')}", "run": key, "step": row.get("step"),
                           "kl": kl, "gold": row["eval_gold"], "proxy": row.get("eval_proxy")})
    return points


def run_pipeline(cfg: PipelineConfig) -> Path:
    """`rlhf run`: validate, then run (or continue) the pipeline; returns the report or result path."""
    result = Pipeline(cfg).run()
    return Path(result.get("report") or Path(cfg.output_dir) / "pipeline_result.json")
