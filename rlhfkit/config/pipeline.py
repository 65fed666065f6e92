"""`rlhf run PIPELINE.yaml` (rlhfkit/pipeline/): the pipeline file and its typed sections.

A stage's section holds that stage's own keys, named and typed as on its config class, so a typo
or a wrong type fails when the file is loaded, naming the section and the key. Every key is
optional there: the pipeline fills in the paths that connect stages, and `${world}` may stand in
for a path not built yet, so a stage's checks that need the whole config (paths exist, keys fit
together) run when the pipeline builds that stage's config, still before anything runs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError, create_model, field_validator, model_validator

from rlhfkit.config.base import BaseConfig, RunConfig, check_gold_spec, misplaced_key, planned_paths
from rlhfkit.config.feedback import CollectConfig, LabelExportConfig, LabelSimulateConfig
from rlhfkit.config.judge import JUDGE_KINDS, LabelJudgeConfig, _judge_error
from rlhfkit.config.rl import PPOConfig
from rlhfkit.config.tools import SynthConfig
from rlhfkit.config.train import DPOConfig, RewardConfig, SFTConfig

# Keys the pipeline sets itself in each section (rlhfkit/pipeline/__init__.py detail 1): run directories,
# the feedback store and the inputs that connect the stages. A value given there would be silently
# replaced, so these keys are not on the section and naming one is an error that says why.
SET_BY_PIPELINE: dict[str, tuple[str, ...]] = {
    "world": ("output_dir",),
    "sft": ("output_dir", "resume"),
    "collect": ("output_dir", "store", "project", "models", "selection_model"),
    "label": ("output_dir", "store", "project"),
    "judge": ("output_dir", "store", "project"),
    "export": ("store", "project", "output"),
    "reward": ("output_dir", "data", "resume"),
    "rl": ("output_dir", "model", "resume"),
    "dpo": ("output_dir", "model", "data", "resume"),
}


class Section(BaseConfig):
    """A stage's keys in a pipeline file: each optional, checked by name and type on load."""

    def overrides(self) -> dict[str, Any]:
        """The keys the file gave (unset ones keep the stage's default or the pipeline's value)."""
        return self.model_dump(exclude_unset=True)

    def __getitem__(self, key: str) -> Any:
        # Sections were plain mappings before they were typed; `cfg.rl["ppo"]["estimator"]` still
        # reads a key the file gave, and a key it did not give is a KeyError as in that mapping.
        if key not in self.model_fields_set:
            raise KeyError(key)
        return getattr(self, key)


def stage_section(name: str, stage: type[BaseConfig], section: str,
                  base: type[Section] = Section) -> type[Section]:
    """A `Section` called ``name`` with the fields of ``stage`` (types, bounds and docstrings), all
    optional, less the keys the pipeline sets in ``section``."""
    fields: dict[str, Any] = {}
    for key, info in stage.model_fields.items():
        if key in SET_BY_PIPELINE[section]:
            continue
        annotation = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        fields[key] = (annotation, Field(None, description=info.description))
    model = create_model(name, __base__=base, __doc__=f"`{section}` section: the keys of {stage.__name__}.",
                         **fields)
    model.removed_keys = stage.removed_keys  # a renamed key is named in a pipeline file too
    return model


class _LabelMode(Section):
    """How judgements are made; the keys of the other mode do not apply."""

    mode: Literal["simulate", "people", "off"] = "simulate"
    """'simulate': simulated annotators (`rlhf label simulate` keys); 'people': annotators label in
    `rlhf label serve` while the pipeline waits for `target` judgements (of people: AI judges' do not
    count); 'off': no labelling step, the `judge` section's AI judges label alone."""

    target: int | None = Field(None, gt=0)
    """mode 'people': judgements in the project to wait for before the round goes on."""

    poll_seconds: float = Field(10.0, gt=0.0)
    """mode 'people': seconds between two looks at the store."""

    timeout_seconds: float = Field(86400.0, gt=0.0)
    """mode 'people': give up (the re-run waits again) after this long."""

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_off(cls, v: Any) -> Any:
        return "off" if v is False else v  # YAML reads a bare `off` as false

    @model_validator(mode="after")
    def _keys_fit_mode(self) -> _LabelMode:
        people = {"target", "poll_seconds", "timeout_seconds"}
        given = self.model_fields_set - {"mode"}
        wrong = sorted(given - people if self.mode == "people" else given & people)
        if self.mode == "off":
            wrong = sorted(given)
        if wrong:
            raise ValueError(f"{', '.join(wrong)}: not a key of label mode '{self.mode}'")
        if self.mode == "people" and self.target is None:
            raise ValueError("label mode 'people' needs `target` (the number of judgements to wait for)")
        return self


class _JudgeRun(Section):
    """One AI judge of the pipeline: `rlhf label judge` keys; `judge` (the spec) is required."""

    @field_validator("judge", mode="before", check_fields=False)
    @classmethod
    def _judge_kind(cls, v: Any) -> Any:
        # As LabelJudgeConfig's own check (the error names `judge.<key>`), with `${world}` paths
        # accepted as planned: they are checked again, resolved, when the plan is built.
        if v is None or isinstance(v, BaseModel):
            return v
        if not isinstance(v, dict):
            raise ValueError(f"judge must be a mapping with a `kind` ({', '.join(JUDGE_KINDS)}), got {v!r}")
        spec_cls = JUDGE_KINDS.get(v.get("kind"))
        if spec_cls is None:
            raise ValueError(f"judge.kind must be one of {', '.join(JUDGE_KINDS)}, got {v.get('kind')!r}")
        try:
            with planned_paths(["${world}"]):
                return spec_cls.model_validate(v)
        except ValidationError as e:
            raise ValueError("; ".join(_judge_error(err) for err in e.errors())) from None

    @model_validator(mode="after")
    def _has_spec(self) -> _JudgeRun:
        if getattr(self, "judge", None) is None:
            raise ValueError("a judge needs `judge:` (a mapping with `kind` and that kind's keys, as in "
                             "`rlhf label judge`)")
        return self


SynthSection = stage_section("SynthSection", SynthConfig, "world")
SFTSection = stage_section("SFTSection", SFTConfig, "sft")
CollectSection = stage_section("CollectSection", CollectConfig, "collect")
LabelSection = stage_section("LabelSection", LabelSimulateConfig, "label", base=_LabelMode)
JudgeSection = stage_section("JudgeSection", LabelJudgeConfig, "judge", base=_JudgeRun)
ExportSection = stage_section("ExportSection", LabelExportConfig, "export")
RewardSection = stage_section("RewardSection", RewardConfig, "reward")
PPOSection = stage_section("PPOSection", PPOConfig, "rl")
DPOSection = stage_section("DPOSection", DPOConfig, "dpo")


class EvaluateSection(Section):
    """The final evaluation of every policy (rlhfkit/pipeline/__init__.py detail 6)."""

    prompts: str | None = None
    """Held-out prompts file; default `collect.prompts`."""

    num_prompts: int = Field(100, gt=0)
    """Use the first N prompts."""

    num_samples: int = Field(1, gt=0)
    """Completions sampled per prompt and policy."""

    max_new_tokens: int = Field(48, gt=0)
    """Maximum new tokens per completion."""

    gold: str | None = None
    """Gold reward of the final evaluation (`rlhf evaluate`'s `gold`): 'synthetic', 'module:function'
    with signature (prompts, completions) -> list[float] (TRL's reward_funcs signature, with
    **kwargs, works too) or a reward-model directory (a held-out judge); null for none. Default:
    'synthetic' when there is a `world` section, else none. A directory is checked when the plan
    is built (it may be under ${world})."""

    @field_validator("gold", mode="before")
    @classmethod
    def _gold_form(cls, v: Any) -> Any:
        if isinstance(v, bool):  # the form only; a directory is checked by the plan, ${world} resolved
            check_gold_spec(v, "gold")
        return v


class PipelineConfig(RunConfig):
    """`rlhf run PIPELINE.yaml`: the whole loop from one file (rlhfkit/pipeline/).

    Each stage section holds that stage's keys (`rlhf <stage> --help`); the pipeline fills in the
    paths that connect stages (models, data, store, output directories). `${world}` in any string
    is the synthetic world's directory when there is a `world` section."""

    output_dir: str = "runs/pipeline"
    """Directory of every stage's run directory, the feedback store, report.md and its plots."""

    project: str = "pipeline"
    """Feedback-store project that holds the comparisons of every round."""

    rounds: int = Field(1, ge=1)
    """Iterated RLHF: rounds of collect -> label -> reward -> RL (each round samples the last policy)."""

    world: SynthSection | None = None
    """Build the synthetic world first (`rlhf synth` keys; {} for the defaults)."""

    sft: SFTSection | None = None
    """Supervised fine-tuning (`rlhf sft` keys: model, data, ...); its output is the SFT policy."""

    policy: str | None = None
    """Starting (SFT) policy when there is no `sft` section."""

    collect: CollectSection = Field(default_factory=CollectSection)
    """`rlhf collect` keys (prompts, num_samples, pairs_per_prompt, select, ...)."""

    label: LabelSection = Field(default_factory=lambda: LabelSection(mode="simulate"))
    """mode 'simulate' (`rlhf label simulate` keys), 'people' (target: judgements to wait for;
    poll_seconds; timeout_seconds) while annotators label in `rlhf label serve`, or 'off' (`label: off`
    or `label: null` too; only with a `judge` section: the AI judges label alone)."""

    judge: dict[str, JudgeSection] = Field(default_factory=dict)
    """AI judges by name, each `rlhf label judge` keys (`judge: {kind: ...}`, inconsistent,
    strength_bins, max_tasks; `name`, the annotator's name, defaults to the entry's name). Each round,
    after collect and before the simulated or human labelling, every judge answers the round's tasks
    (step `round<r>/judge-<name>`), taking one of each task's `collect.annotators_per_task` slots:
    that must be at least the number of judges plus one person (none with `label: off`); when not
    given it is set to exactly that. Give judges + 2 or more for `export.judges: calibrated`, which
    needs two people on the same tasks to measure the human-human kappa. A judge's annotator keeps
    its spec: a changed spec needs a new entry name (or `name`)."""

    export: ExportSection = Field(default_factory=ExportSection)
    """`rlhf label export` keys (aggregate, ties, min_agreement, judges, judge_margin, judge_min_tasks)."""

    reward: RewardSection | None = None
    """Reward-model training (`rlhf reward` keys); retrained each round on all comparisons so far."""

    rl: dict[str, PPOSection] = Field(default_factory=dict)
    """Online RL runs by name, each `rlhf ppo` keys (estimator: ppo | rloo | grpo, kl_coef, ...)."""

    dpo: dict[str, DPOSection] = Field(default_factory=dict)
    """DPO-family runs by name, each `rlhf dpo` keys (loss_type, beta, ...)."""

    evaluate: EvaluateSection | None = None
    """Final evaluation + report: prompts (file), num_prompts, num_samples, max_new_tokens, gold."""

    @model_validator(mode="before")
    @classmethod
    def _no_keys_the_pipeline_sets(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for where, section in _named_sections(data):
            group = where.split(".", 1)[0]
            for key in SET_BY_PIPELINE.get(group, ()):
                if key in section:
                    out = data.get("output_dir", cls.model_fields["output_dir"].default)
                    raise misplaced_key([f"{where}.{key}"], (
                        f"pipeline section '{where}': `{key}` is set by the pipeline (run directories live "
                        f"under output_dir = {out}; the store and each stage's inputs come from the stages "
                        "before); remove it"))
        return data

    @field_validator("label", mode="before")
    @classmethod
    def _label_off(cls, v: Any) -> Any:
        # `label: null`, `label:` and `label: off` (YAML reads a bare `off` as false) are mode 'off'
        return {"mode": "off"} if v is None or v is False else v

    @field_validator("rl", "dpo", mode="before")
    @classmethod
    def _empty_runs(cls, v: Any) -> Any:
        # `rl: {ppo: }` in YAML is a run with every default.
        return {name: ({} if run is None else run) for name, run in v.items()} if isinstance(v, dict) else v

    @model_validator(mode="after")
    def _pipeline_consistent(self) -> PipelineConfig:
        if (self.sft is None) == (self.policy is None):
            raise ValueError("give exactly one of `sft` (train the SFT policy) and `policy` (start from one)")
        if not self.collect.prompts and not self.collect.responses:
            raise ValueError("collect needs `prompts` (a prompt file) or `responses` (a JSONL to import)")
        if not self.rl and not self.dpo:
            raise ValueError("nothing to train: add `rl` and/or `dpo` runs")
        names = (*self.rl, *self.dpo, *self.judge)
        bad = [n for n in names if not n.replace("-", "").replace("_", "").isalnum()]
        if bad:
            raise ValueError(f"run and judge names must be letters, digits, '-' or '_': {bad}")
        if self.label.mode == "off" and not self.judge:
            raise ValueError("label mode 'off' needs a `judge` section: nothing would label the comparisons")
        return self


def _named_sections(data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name, raw mapping) of every stage section in the raw file: `rl.<run>` / `dpo.<run>` per run."""
    found = []
    for name in SET_BY_PIPELINE:
        value = data.get(name)
        if name in ("rl", "dpo", "judge") and isinstance(value, dict):
            found += [(f"{name}.{run}", sec) for run, sec in value.items() if isinstance(sec, dict)]
        elif isinstance(value, dict):
            found.append((name, value))
    return found

