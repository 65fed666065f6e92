"""`rlhf run PIPELINE.yaml`: the whole loop from one file, in rounds.

    world? -> sft? -> [collect -> judge...? -> label? -> export -> reward -> rl... / dpo...] x rounds
                   -> evaluate -> report

Implementation details:
1. Stages connect through files only: each writes its own run directory under `output_dir`
   (`sft/`, `round1/reward/`, `round1/rl-ppo/`, ...); the feedback store (`feedback.db`) holds the
   comparisons of every round, so "all data so far" is one export of the project.
2. Everything is checked before anything runs, by building the plan (:mod:`.plan`): every step's
   config is built with its stage's real class and the real paths it will read (paths an earlier
   step creates count as planned), so a typo, a missing input, an inconsistent key or a tokenizer
   that does not fit the model fails here, naming the section and the key.
3. Re-running skips finished steps (:mod:`.state`): `.pipeline/state.json` records a fingerprint
   per step (its resolved config, which holds its input paths, plus the fingerprints of the steps
   it reads). A finished step with the same fingerprint is skipped; an interrupted one resumes
   (training stages run with `resume: true`, collection, labelling and judging are idempotent); a changed
   one runs again after its old run directory is moved aside (nothing is deleted).
4. Rounds (iterated online RLHF, Bai et al. 2022 §4.5): round r collects samples from the policy of
   round r-1 (round 1: the SFT model), labels them, retrains the reward model on all comparisons so
   far (from the SFT weights), and continues each RL method from its own previous policy with the
   KL still anchored to the SFT model (`ref_model`). DPO is offline: it retrains from SFT on all
   comparisons so far.
5. Active selection (`collect.select: uncertain`, rounds >= 2): the previous round's reward model
   picks the candidate pairs it is least sure about (see rlhfkit/feedback/collect.py).
6. Evaluation (:mod:`.report`) samples every final policy on held-out prompts with the same seed and
   compares it with the SFT model (gold win-rate, KL, reward-model score; the gold is `evaluate.gold`:
   the synthetic world's by default, or the user's function or held-out reward model); the frontier has one
   point per evaluation of every RL / DPO run (their metrics.jsonl), and report.md + PNGs are written;
   with AI judges, its "Feedback sources" section shows the gate the export applied.
7. AI judges (`judge:` section): each round, right after collect, every judge answers the round's
   tasks through the store (`rlhf label judge`, step `round<r>/judge-<name>`, annotator `<name>`),
   taking one slot of each task; then people (simulated, or in the web UI) fill the others. The plan
   sets `collect.annotators_per_task` to judges + 1 person when not given and refuses a value that
   leaves no room; `label: off` lets the judges label alone.

Layout: :mod:`.plan` (the steps and their configs), :mod:`.checks` (paths and tokenizer, before
any config is built), :mod:`.state` (fingerprints and the state file), :mod:`.run` (executing the
plan), :mod:`.report` (evaluation, agreement and the frontier).
"""

from rlhfkit.pipeline.plan import Step, build_plan
from rlhfkit.pipeline.report import frontier_points
from rlhfkit.pipeline.run import Pipeline, run_pipeline

__all__ = ["Pipeline", "Step", "build_plan", "frontier_points", "run_pipeline"]
