"""`rlhf <stage> --config FILE.yaml [key=value ...]`: parse, validate, dispatch. No logic here.

Every stage is invoked the same way; the stage's config class (rlhfkit/config/) is the single
source of its options and of its ``--help`` text.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from dataclasses import dataclass

from rlhfkit.errors import RlhfkitError


@dataclass(frozen=True)
class Stage:
    config: str  # class name in rlhfkit.config
    target: str  # "module:function" taking the config
    summary: str


STAGES: dict[str, Stage] = {
    "synth": Stage("SynthConfig", "rlhfkit.synthetic.world:build",
                   "build the synthetic world: corpus, tokenizer, tiny base LM, prompts, SFT data"),
    "sft": Stage("SFTConfig", "rlhfkit.train.sft:train", "supervised fine-tuning on demonstrations"),
    "dpo": Stage("DPOConfig", "rlhfkit.train.dpo:train",
                 "direct preference optimisation (DPO, IPO, cDPO, hinge, SimPO) on preference pairs"),
    "reward": Stage("RewardConfig", "rlhfkit.train.reward:train",
                    "train a reward model on preference pairs or rankings (with ties, margins, ensembles)"),
    "ppo": Stage("PPOConfig", "rlhfkit.train.ppo:train",
                 "online RL from a reward model or function: PPO with a critic, or RLOO / GRPO"),
    "score": Stage("ScoreConfig", "rlhfkit.scoring:score_file",
                   "score prompt/response rows with a reward model"),
    "gold-score": Stage("GoldScoreConfig", "rlhfkit.synthetic.world:gold_score_file",
                        "score completions with the synthetic world's gold reward"),
    "evaluate": Stage("EvaluateConfig", "rlhfkit.evaluate.policies:evaluate",
                      "compare policies (reward, gold win rate vs SFT, KL, length, diversity) "
                      "and write report.md"),
    "collect": Stage("CollectConfig", "rlhfkit.feedback.collect:collect",
                     "sample (or import) responses and create comparison tasks in a feedback project"),
}

# `rlhf label <sub>`: the human-feedback commands; each entry is one subcommand.
LABEL_STAGES: dict[str, Stage] = {
    "simulate": Stage("LabelSimulateConfig", "rlhfkit.feedback.simulate:simulate_labels",
                      "simulated annotators answer a project's queue through the store"),
    "export": Stage("LabelExportConfig", "rlhfkit.feedback.export:export",
                    "export judgements as a preference dataset (prompt/chosen/rejected) for reward and dpo"),
    "judge": Stage("LabelJudgeConfig", "rlhfkit.feedback.judges:judge_labels",
                   "AI judges (reward model, function, local LM, OpenAI-compatible API) answer the queue"),
    "serve": Stage("LabelServeConfig", "rlhfkit.feedback.app:serve",
                   "serve the annotator web UI, JSON API and admin pages (agreement, leaderboard, export)"),
}


def _resolve(target: str):
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def _describe(config_class: str) -> str:
    from rlhfkit import config as config_mod
    return config_mod.describe_fields(getattr(config_mod, config_class))


def _stage_parser(sub, name: str, stage: Stage):
    from rlhfkit import config as config_mod
    cls = getattr(config_mod, stage.config)
    p = sub.add_parser(name, help=stage.summary, description=f"{stage.summary}.\n\nkeys (set in --config "
                       "YAML or as key=value overrides, which win):\n" + config_mod.describe_fields(cls),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", help="YAML file with the stage's keys")
    _verbosity_flags(p, argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override a key (YAML-typed value)")
    p.set_defaults(_stage=name)
    return p


def _verbosity_flags(p: argparse.ArgumentParser, default) -> None:
    # Accepted before and after the stage name; the subparsers' SUPPRESS default keeps a flag given
    # before the stage from being reset by the subparser.
    p.add_argument("--quiet", "-q", action="store_true", default=default, help="only warnings and errors")
    p.add_argument("--verbose", "-v", action="store_true", default=default,
                   help="also the libraries' own messages (transformers load reports, accelerate, alembic)")


# Libraries whose routine narration buries the progress bars: transformers' load reports (e.g.
# the fresh reward head "MISSING"), accelerate's "Removed shared tensor" on every tied-embedding
# save, alembic's migration steps. Shown with --verbose.
_NOISY = {"transformers": logging.ERROR, "accelerate": logging.ERROR, "alembic": logging.WARNING,
          "datasets": logging.WARNING, "peft": logging.ERROR, "httpx": logging.WARNING}


def configure_logging(quiet: bool = False, verbose: bool = False) -> None:
    """Our messages at INFO (WARNING with ``quiet``); library noise filtered unless ``verbose``."""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if verbose:
        return
    import warnings

    for name, level in _NOISY.items():
        logging.getLogger(name).setLevel(level)
    if "transformers" in sys.modules:  # it has its own handler and level, read once at import
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    else:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", module=r"(peft|transformers|accelerate)(\..*)?$")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhf", description="rlhfkit: the whole RLHF loop from one CLI. Every stage runs as "
        "`rlhf <stage> --config FILE.yaml [key=value ...]`; `rlhf <stage> --help` lists its keys.")
    from rlhfkit import __version__
    parser.add_argument("--version", action="version", version=f"rlhfkit {__version__}")
    _verbosity_flags(parser, False)
    sub = parser.add_subparsers(title="stages", metavar="<stage>")
    for name, stage in STAGES.items():
        _stage_parser(sub, name, stage)
    label = sub.add_parser("label", help="human feedback: " + ", ".join(LABEL_STAGES))
    label_sub = label.add_subparsers(title="label commands", metavar="<command>")
    for name, stage in LABEL_STAGES.items():
        _stage_parser(label_sub, name, stage).set_defaults(_stage=f"label {name}")
    run = sub.add_parser("run", help="run (or continue) a whole pipeline from one YAML file: "
                         "sft -> collect -> label -> reward -> RL / DPO, in rounds, then evaluate and write "
                         "report.md",
                         description="keys of the pipeline file:\n" + _describe("PipelineConfig"),
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("pipeline", help="pipeline YAML (see examples/)")
    _verbosity_flags(run, argparse.SUPPRESS)
    run.add_argument("overrides", nargs="*", metavar="key=value", help="override a key (YAML-typed value)")
    run.set_defaults(_stage="run")
    demo = sub.add_parser("demo", help="build the synthetic world and run the whole pipeline on it (SFT, "
                          "simulated feedback, reward model, PPO and DPO), then print the evaluation table")
    _verbosity_flags(demo, argparse.SUPPRESS)
    demo.add_argument("--quick", action="store_true", help="a much smaller run, for tests")
    demo.add_argument("--output", default="runs/demo", help="directory for all of the demo's runs")
    demo.set_defaults(_stage="demo")
    return parser


def continue_hint(stage_name: str) -> str:
    """How to continue an interrupted stage: `resume=true` where its config has that key (training
    stages), else the same command again (a pipeline skips its finished steps; collection, labelling
    and judging are idempotent, and a judge's answers are journaled)."""
    stage = STAGES.get(stage_name) or LABEL_STAGES.get(stage_name.removeprefix("label "))
    if stage is not None:
        from rlhfkit import config as config_mod

        if "resume" in getattr(config_mod, stage.config).model_fields:
            return "rerun with resume=true to continue"
    return "rerun the same command to continue"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_stage", None):
        parser.print_help()
        return 0
    configure_logging(quiet=args.quiet, verbose=args.verbose)
    try:
        if args._stage == "demo":
            from rlhfkit.demo import run_demo
            run_demo(output=args.output, quick=args.quick)
            return 0
        from rlhfkit import config as config_mod
        if args._stage == "run":
            from rlhfkit.pipeline import run_pipeline
            cfg = config_mod.load_config(config_mod.PipelineConfig, args.pipeline, args.overrides)
            print(run_pipeline(cfg))
            return 0
        stage = STAGES.get(args._stage) or LABEL_STAGES[args._stage.removeprefix("label ")]
        cfg = config_mod.load_config(getattr(config_mod, stage.config), args.config, args.overrides)
        result = _resolve(stage.target)(cfg)
        if result is not None and os.environ.get("RANK", "0") == "0":  # once, not once per process
            print(result)
        return 0
    except RlhfkitError as e:
        print(f"rlhf {args._stage}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rlhf {args._stage}: interrupted; {continue_hint(args._stage)}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
