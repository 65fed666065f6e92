"""The calibration gate on the synthetic world: a good AI judge kept, a noisy one dropped, and what
that does to the reward model trained on the export (issue 16's acceptance figure).

    python bench/judge_gate.py [--output runs/bench_judge_gate] [--seed 0] [--people-prompts 60]
        [--pairs-per-prompt 4] [--noisy-judge rm|function] [--epochs 3] ...   (--help for every size)

Steps, all through the feedback store and the stages' own Python entry points, on the quick world
(the test suite's cache, ``.rlhfkit-cache/`` or $RLHFKIT_TEST_CACHE) and its SFT policy (trained once
under --output):

1. **Queue.** `rlhf collect` samples --samples responses per training prompt from the SFT policy
   and makes --pairs-per-prompt pair tasks per prompt in one project with ``annotators_per_task`` =
   3 people + 2 judges, in two parts: the tasks of --people-prompts prompts (seeded choice) first,
   then, after the people have answered, the tasks of every other training prompt.
2. **People.** `rlhf label simulate`: 3 simulated labelers (Bradley-Terry on the gold reward,
   temperature --temperature, default 0.3) answer the queue as it stands after part one, i.e.
   *every* task of the people's prompts and nothing else. Why a subset: that is the setting judges
   are for (people label a slice, judges the rest), and with every task labelled by three people
   the human-human kappa and each judge's kappa against the human majority rest on all of the
   shared tasks (up to --people-prompts x --pairs-per-prompt; a prompt whose samples have too few
   distinct texts gets fewer tasks; well above the gate's ``judge_min_tasks`` 20).
3. **Judges** (`rlhf label judge`, both orders, role ``judge``), each a reward model trained from the
   SFT weights on pairs of *other* SFT samples of the training prompts (--judge-samples per prompt,
   --judge-rounds passes over the prompts):
   - ``good-judge``: an RM trained on many pairs (--good-pairs-per-prompt per prompt and pass,
     several thousand) labelled by a near-gold labeler (temperature --good-temperature, 0.05);
   - ``noisy-judge``: ``--noisy-judge rm`` (default) an RM trained on few labels (--noisy-pairs,
     default 50) from a labeler as noisy as the people (--temperature); ``--noisy-judge function``
     instead the gold reward plus seeded Gaussian noise (sd --noise-sd) per response, as a
     `module:function` pointwise judge (this file's :func:`noisy_gold`).
   Both answer the whole queue.
4. **Calibration and exports.** :func:`rlhfkit.feedback.calibration.calibrate` (bootstrap CIs over
   tasks) gives each judge's kappa with the human majority and the human-human kappa; then three
   per-judgement exports of the same project: ``judges=none`` (people only), ``judges=all``, and
   ``judges=calibrated`` (--margin, --min-tasks), whose gate decisions are printed.
5. **Downstream reward models.** --rm-seeds RMs per export (seeds --seed, --seed+1, ...; the same
   seeds and settings for every export; --epochs over its rows, so a bigger export also trains for
   more steps), each scored on held-out pairs (2 SFT samples per held-out prompt, --eval-repeats
   passes) against the *gold* ordering, as bench/reward_ceiling.py does; mean and sd over the seeds
   (one seed's accuracy moves by several points). The two judges' own RMs are scored the same way.

Measured: kappa (and raw agreement) of each judge with the human majority, with 95% CIs; the
human-human kappa; each annotator's agreement with the gold ordering on the queue; what the gate
kept; held-out accuracy vs gold of the RM trained on each export. Prints a table; writes
``<output>/judge_gate.json``. Resumable where cheap: the SFT policy, the collects (idempotent), the
people (skipped once finished), the judges' RMs, the judges (their answer journals), the held-out
samples and each downstream RM (retrained only if its export changed) are reused by a rerun. A
rerun with other sizes needs a fresh --output (collect would add tasks to the old project).

Measured 2026-12-02, default sizes, 2 shared (busy) CPU cores, 9.5 min from an empty --output with
the world cached: 652 tasks, 240 labelled by the people; human-human kappa 0.51 [0.44, 0.58];
good-judge kappa 0.49 [0.38, 0.58] (kept; 0.83 agreement with gold on held-out pairs), noisy-judge
kappa -0.05 [-0.18, 0.08] (dropped; 0.52: 50 labels teach this RM next to nothing, so no function
judge was needed); RM accuracy vs gold, mean of 3 seeds: people only 0.573, all 0.597, calibrated
0.707. Numbers move with the world's build (its key covers the code).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PROJECT = "judge-gate"
PEOPLE = 3
JUDGES = ("good-judge", "noisy-judge")
MODES = ("none", "all", "calibrated")
NOISE_ENV = "RLHFKIT_BENCH_NOISE"  # "sd,seed" for noisy_gold (a judge function takes no arguments)


def noisy_gold(prompts: list[str], completions: list[str]) -> list[float]:
    """Pointwise judge for ``--noisy-judge function``: gold reward + N(0, sd^2) noise, one draw per
    (prompt, response) seeded by its text, so both orders of a pair see the same scores."""
    from rlhfkit.synthetic.gold import gold_reward_fn

    sd, seed = os.environ.get(NOISE_ENV, "1.0,0").split(",")
    gold = gold_reward_fn(prompts, completions)
    out = []
    for p, c, g in zip(prompts, completions, gold):
        h = int.from_bytes(hashlib.sha256(f"{seed}\0{p}\0{c}".encode()).digest()[:8], "little")
        out.append(float(g) + float(sd) * float(np.random.default_rng(h).standard_normal()))
    return out


def _json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _fin(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default="runs/bench_judge_gate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--prompts", type=int, default=None, help="use only this many training prompts")
    ap.add_argument("--sft-steps", type=int, default=None, help="SFT steps (default: the quick demo's)")
    ap.add_argument("--people-prompts", type=int, default=60,
                    help="(distinct) prompts whose tasks people label")
    ap.add_argument("--samples", type=int, default=6, help="SFT samples per prompt in the queue")
    ap.add_argument("--pairs-per-prompt", type=int, default=4, help="pair tasks per prompt in the queue")
    ap.add_argument("--temperature", type=float, default=0.3, help="the people's Bradley-Terry temperature")
    ap.add_argument("--judge-samples", type=int, default=4, help="SFT samples per prompt for the judges' RMs")
    ap.add_argument("--judge-rounds", type=int, default=6,
                    help="passes over the training prompts when sampling for the judges' RMs")
    ap.add_argument("--good-pairs-per-prompt", type=int, default=3, help="per prompt and pass")
    ap.add_argument("--good-temperature", type=float, default=0.05, help="labeler of the good judge's RM")
    ap.add_argument("--noisy-judge", choices=["rm", "function"], default="rm")
    ap.add_argument("--noisy-pairs", type=int, default=50, help="labels of the noisy judge's RM")
    ap.add_argument("--noise-sd", type=float, default=1.0, help="--noisy-judge function: noise sd")
    ap.add_argument("--judge-epochs", type=float, default=3.0)
    ap.add_argument("--epochs", type=float, default=3.0, help="epochs of each downstream RM")
    ap.add_argument("--rm-seeds", type=int, default=3,
                    help="downstream RMs per export (seeds --seed, --seed+1, ...): mean and sd reported")
    ap.add_argument("--max-steps", type=int, default=None, help="cap every RM's steps (toy runs)")
    ap.add_argument("--eval-repeats", type=int, default=20, help="passes over the held-out prompts")
    ap.add_argument("--margin", type=float, default=0.1, help="judge_margin of the gate")
    ap.add_argument("--min-tasks", type=int, default=20, help="judge_min_tasks of the gate")
    ap.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples of the kappa CIs")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from rlhfkit.config import (CollectConfig, LabelJudgeConfig, LabelSimulateConfig, RewardConfig,
                                config_from_dict)
    from rlhfkit.data.loading import read_records, write_jsonl
    from rlhfkit.demo import sft_config
    from rlhfkit.feedback.calibration import calibrate, roles_of
    from rlhfkit.feedback.collect import collect
    from rlhfkit.feedback.export import export_rows
    from rlhfkit.feedback.judges import judge_labels
    from rlhfkit.feedback.simulate import SimulatedLabeler, make_preference_pairs, simulate_labels
    from rlhfkit.feedback.store import FeedbackStore
    from rlhfkit.synthetic.gold import gold_reward_fn
    from rlhfkit.synthetic.preferences import reward_vs_gold, sample_policy
    from rlhfkit.testing.worldcache import cached_quick_world
    from rlhfkit.train.reward import train as reward_train
    from rlhfkit.train.sft import train as sft_train

    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    times: dict[str, float] = {}

    def lap(name: str) -> None:
        times[name] = round(time.time() - t0 - sum(times.values()), 1)
        print(f"[{time.time() - t0:6.0f}s] {name} done", file=sys.stderr, flush=True)

    # -- world and SFT policy --------------------------------------------------------------------
    world = cached_quick_world(Path(os.environ.get("RLHFKIT_TEST_CACHE", REPO / ".rlhfkit-cache")))
    sft = out / "policy" / "sft" / "final"
    if not (sft / "model.safetensors").is_file():
        scfg = sft_config(world, out / "policy", quick=True)
        scfg.eval_data, scfg.eval_fraction, scfg.save_every, scfg.resume = None, 0.0, 0, True
        if args.sft_steps is not None:
            scfg.max_steps = args.sft_steps
        sft = Path(sft_train(scfg))
    train_prompts = [r["prompt"] for r in read_records(world / "prompts.jsonl")][: args.prompts]
    lap("world+sft")

    # -- 1-2. the queue, people first ------------------------------------------------------------
    db = out / "feedback.db"
    rng = np.random.default_rng(args.seed)
    # the store keys prompts on their text and the world repeats some: split the distinct texts
    distinct = list(dict.fromkeys(train_prompts))
    people_ix = set(rng.permutation(len(distinct))[: args.people_prompts].tolist())
    part = {"people": [p for i, p in enumerate(distinct) if i in people_ix],
            "rest": [p for i, p in enumerate(distinct) if i not in people_ix]}

    def collect_part(name: str) -> dict:
        path = write_jsonl(out / f"prompts_{name}.jsonl", [{"prompt": p} for p in part[name]])
        return collect(CollectConfig(
            store=str(db), project=PROJECT, annotators_per_task=PEOPLE + len(JUDGES), prompts=str(path),
            models=[str(sft)], model_names=["sft"], num_samples=args.samples,
            pairs_per_prompt=args.pairs_per_prompt, max_new_tokens=48, temperature=1.0, seed=args.seed,
            output_dir=str(out / f"collect_{name}")))

    collected = {"people": collect_part("people")}
    sim_dir = out / "simulate"
    if not (sim_dir / "summary.json").is_file():  # once the rest is collected, people must not go on
        simulate_labels(LabelSimulateConfig(store=str(db), project=PROJECT, num_annotators=PEOPLE,
                                            name_prefix="person", temperature=args.temperature,
                                            seed=args.seed, output_dir=str(sim_dir)))
    people_summary = json.loads((sim_dir / "summary.json").read_text())
    if part["rest"]:
        collected["rest"] = collect_part("rest")
    lap("collect+people")

    # -- 3. the judges ---------------------------------------------------------------------------
    def train_rm(data: Path, where: Path, epochs: float, keyed: bool = False, seed: int = args.seed) -> Path:
        """An RM from the SFT weights on ``data``; reused when ``where`` holds one trained on the same
        bytes of data (a rerun), retrained otherwise. ``keyed``: ``where`` gets the data's digest, so a
        judge on other data is another spec (its name then refuses it: use a fresh --output)."""
        digest = hashlib.sha1(data.read_bytes()).hexdigest()
        if keyed:
            where = where.with_name(f"{where.name}-{digest[:8]}")
        marker = where / "data.sha1"
        if (where / "final" / "config.json").is_file() and marker.is_file() and marker.read_text() == digest:
            return where / "final"
        if where.exists():
            shutil.rmtree(where)
        final = reward_train(RewardConfig(
            model=str(sft), data=str(data), output_dir=str(where), learning_rate=1e-3,
            per_device_batch_size=16, num_epochs=epochs, max_steps=args.max_steps, max_length=96,
            eval_fraction=0.0, warmup_ratio=0.05, log_every=1000, save_every=0, normalize="none",
            seed=seed))
        marker.write_text(digest)
        return Path(final)

    jdir = out / "judges"
    jdir.mkdir(exist_ok=True)
    samples_file = jdir / "samples.json"
    judge_prompts = train_prompts * args.judge_rounds
    if not samples_file.is_file():
        groups = sample_policy(sft, judge_prompts, samples_per_prompt=args.judge_samples,
                               seed=args.seed + 100)
        _json(samples_file, [[s for s in g if s.strip()] for g in groups])
    groups = json.loads(samples_file.read_text())
    good_rows = make_preference_pairs(judge_prompts, groups,
                                      SimulatedLabeler(args.good_temperature, seed=args.seed + 101),
                                      gold_reward_fn, rng_seed=args.seed + 102,
                                      pairs_per_prompt=args.good_pairs_per_prompt)
    good_rm = train_rm(write_jsonl(jdir / "good.jsonl", good_rows), jdir / "good-rm", args.judge_epochs,
                       keyed=True)
    specs = {"good-judge": {"kind": "reward_model", "path": str(good_rm), "max_length": 96, "batch_size": 64}}
    judge_info = {"good-judge": {"kind": "reward_model", "train_pairs": len(good_rows),
                                 "labeler_temperature": args.good_temperature}}
    if args.noisy_judge == "rm":
        noisy_rows = make_preference_pairs(judge_prompts, groups,
                                           SimulatedLabeler(args.temperature, seed=args.seed + 103),
                                           gold_reward_fn, rng_seed=args.seed + 104, pairs_per_prompt=1)
        pick = np.random.default_rng(args.seed + 105).permutation(len(noisy_rows))[: args.noisy_pairs]
        noisy_rows = [noisy_rows[i] for i in sorted(pick)]
        noisy_rm = train_rm(write_jsonl(jdir / "noisy.jsonl", noisy_rows), jdir / "noisy-rm",
                            args.judge_epochs, keyed=True)
        specs["noisy-judge"] = {"kind": "reward_model", "path": str(noisy_rm), "max_length": 96,
                                "batch_size": 64}
        judge_info["noisy-judge"] = {"kind": "reward_model", "train_pairs": len(noisy_rows),
                                     "labeler_temperature": args.temperature}
    else:
        os.environ[NOISE_ENV] = f"{args.noise_sd},{args.seed}"
        sys.path.insert(0, str(Path(__file__).resolve().parent))  # `judge_gate:noisy_gold` imports
        specs["noisy-judge"] = {"kind": "function", "function": "judge_gate:noisy_gold", "mode": "pointwise",
                                "batch_size": 256}
        judge_info["noisy-judge"] = {"kind": "function", "noise_sd": args.noise_sd}
    lap("judge RMs")
    for name in JUDGES:
        # the name carries the noise setting: one annotator is one spec (a changed spec needs a new name)
        summary = judge_labels(config_from_dict(LabelJudgeConfig, {
            "store": str(db), "project": PROJECT, "name": name, "judge": specs[name], "seed": args.seed,
            "output_dir": str(out / f"judge_{name}")}))
        judge_info[name].update({k: summary[k] for k in ("judgements", "position_consistency",
                                                         "first_position_preferred")})
    lap("judges")

    # -- held-out pairs (gold ordering is the yardstick) ------------------------------------------
    held_file = out / "heldout.json"
    if not held_file.is_file():
        eval_prompts = [r["prompt"] for r in read_records(world / "prompts_eval.jsonl")] * args.eval_repeats
        held = sample_policy(sft, eval_prompts, samples_per_prompt=2, seed=args.seed + 200)
        keep = [i for i, s in enumerate(held) if all(x.strip() for x in s) and s[0] != s[1]]
        _json(held_file, {"prompts": [eval_prompts[i] for i in keep], "a": [held[i][0] for i in keep],
                          "b": [held[i][1] for i in keep]})
    held = json.loads(held_file.read_text())

    def heldout_accuracy(rm: Path) -> float:
        return reward_vs_gold(rm, held["prompts"], held["a"], held["b"],
                              labeler_temperature=args.temperature)["accuracy_vs_gold"]

    for name in JUDGES:
        if specs[name]["kind"] == "reward_model":
            judge_info[name]["heldout_accuracy_vs_gold"] = heldout_accuracy(Path(specs[name]["path"]))

    # -- 4. calibration, gold agreement on the queue, exports ---------------------------------------
    with FeedbackStore(db) as store:
        js = store.judgements(PROJECT)
        roles = roles_of(store)
        cal = calibrate(js, roles, min_tasks=args.min_tasks, n_boot=args.n_boot, seed=args.seed)
        exports = {}
        for mode in MODES:
            rows, stats = export_rows(store, PROJECT, judges=mode, judge_margin=args.margin,
                                      judge_min_tasks=args.min_tasks)
            path = write_jsonl(out / "exports" / f"{mode}.jsonl", rows)
            exports[mode] = {"path": path, "rows": len(rows), "tasks": len({r["task_id"] for r in rows}),
                             "by_annotator": {a: sum(r["annotator"] == a for r in rows)
                                              for a in sorted({r["annotator"] for r in rows})},
                             "stats": {k: v for k, v in stats.items() if k != "judge_gate"},
                             "judge_gate": stats.get("judge_gate")}
    gold = _gold_agreement(js, gold_reward_fn)
    lap("calibration+exports")

    # -- 5. downstream RMs -------------------------------------------------------------------------
    seeds = [args.seed + k for k in range(args.rm_seeds)]
    for mode in MODES:
        accs = []
        for seed in seeds:
            rm = train_rm(exports[mode]["path"], out / "rm" / mode / f"seed-{seed}", args.epochs, seed=seed)
            accs.append(heldout_accuracy(rm))
            print(f"RM on judges={mode} (seed {seed}): {exports[mode]['rows']} rows, held-out accuracy vs "
                  f"gold {accs[-1]:.3f}", file=sys.stderr, flush=True)
        exports[mode].update({"heldout_accuracy_vs_gold": float(np.mean(accs)),
                              "heldout_accuracy_sd": float(np.std(accs, ddof=1)) if len(accs) > 1 else None,
                              "heldout_accuracy_by_seed": dict(zip(seeds, accs))})
    lap("downstream RMs")

    gate = {d["judge"]: d for d in exports["calibrated"]["judge_gate"] or []}
    report = {
        "world": "quick", "seed": args.seed, "args": vars(args),
        "queue": {"tasks": len({j["task_id"] for j in js}),
                  "tasks_people": len({j["task_id"] for j in js if roles.get(j["annotator_id"]) != "judge"}),
                  "collect": collected, "people": {k: people_summary[k] for k in
                                                   ("annotators", "judgements", "agreement_with_reward")}},
        "human_kappa": _fin(cal.human_kappa), "human_kappa_ci": [_fin(x) for x in cal.human_kappa_ci],
        "human_pairs": cal.human_pairs, "tasks_with_human_majority": cal.tasks_with_majority,
        "judges": {c.judge: {**judge_info.get(c.judge, {}), "n_shared": c.n_shared,
                             "agreement": _fin(c.agreement),
                             "agreement_ci": [_fin(x) for x in c.agreement_ci],
                             "kappa": _fin(c.kappa), "kappa_ci": [_fin(x) for x in c.kappa_ci],
                             "kept": gate.get(c.judge, {}).get("kept"),
                             "reason": gate.get(c.judge, {}).get("reason")} for c in cal.judges},
        "gold_agreement_on_queue": gold,
        "exports": {m: {k: (str(v) if k == "path" else v) for k, v in e.items()} for m, e in exports.items()},
        "heldout_pairs": len(held["prompts"]), "seconds": times, "total_seconds": round(time.time() - t0, 1),
    }
    _json(out / "judge_gate.json", report)
    _print_table(report)


def _gold_agreement(js: list[dict], gold_fn) -> dict[str, dict]:
    """Per annotator: share of their decided pair choices that pick the gold-better response."""
    texts = {}
    for j in js:
        for rid, t in zip(j["response_ids"], j["texts"]):
            texts[rid] = (j["prompt"], t)
    ids = sorted(texts)
    g = dict(zip(ids, gold_fn([texts[i][0] for i in ids], [texts[i][1] for i in ids])))
    out: dict[str, list[int]] = {}
    for j in js:
        if j["winner_id"] is None or len(j["response_ids"]) != 2:
            continue
        loser = next(r for r in j["response_ids"] if r != j["winner_id"])
        if g[j["winner_id"]] != g[loser]:
            out.setdefault(j["annotator"], []).append(int(g[j["winner_id"]] > g[loser]))
    return {a: {"n": len(v), "accuracy": float(np.mean(v))} for a, v in sorted(out.items())}


def _print_table(r: dict) -> None:
    def f(x, d=3):
        return "  -  " if x is None else f"{x:.{d}f}"

    def ci(c):
        return "" if c is None or c[0] is None else f" [{c[0]:.2f}, {c[1]:.2f}]"

    ga = r["gold_agreement_on_queue"]
    people = [a for a in ga if a.startswith("person-")]
    lines = ["", f"queue: {r['queue']['tasks']} pair tasks, {r['queue']['tasks_people']} of them labelled by "
             f"{len(people)} people (T={r['args']['temperature']}); held-out pairs: {r['heldout_pairs']}",
             f"human-human kappa: {f(r['human_kappa'])}{ci(r['human_kappa_ci'])} ({r['human_pairs']} pairs);"
             f" people's agreement with gold on the queue: "
             + ", ".join(f"{a} {ga[a]['accuracy']:.3f}" for a in people), "",
             f"{'judge':<12} {'shared':>6} {'agree w/ majority':<22} {'kappa w/ people':<22} "
             f"{'gold agr (queue)':>16} {'RM held-out':>11}  gate (margin {r['args']['margin']})"]
    for name, j in r["judges"].items():
        lines.append(f"{name:<12} {j['n_shared']:>6} {f(j['agreement']) + ci(j['agreement_ci']):<22} "
                     f"{f(j['kappa']) + ci(j['kappa_ci']):<22} {f(ga.get(name, {}).get('accuracy')):>16} "
                     f"{f(j.get('heldout_accuracy_vs_gold')):>11}  {'KEPT' if j['kept'] else 'dropped'}")
    lines += ["", f"{'export':<17} {'rows':>6} {'tasks':>6}  {'RM acc vs gold, mean (sd) [by seed]':<36} "
              "annotators"]
    for m, e in r["exports"].items():
        acc = (f"{f(e['heldout_accuracy_vs_gold'])} ({f(e['heldout_accuracy_sd'])}) ["
               + " ".join(f"{a:.3f}" for a in e["heldout_accuracy_by_seed"].values()) + "]")
        lines.append(f"judges={m:<10} {e['rows']:>6} {e['tasks']:>6}  {acc:<36} "
                     + ", ".join(f"{a}:{n}" for a, n in e["by_annotator"].items()))
    lines.append(f"\ntotal {r['total_seconds']:.0f} s; JSON: judge_gate.json under the output directory")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
