"""`report.md` and its PNG plots, built from files on disk (ARCHITECTURE.md "Run directories").

Inputs: the dict `evaluate_policies` returns, training run directories (metrics.jsonl), reward
run directories (eval.json), optional labeler-agreement statistics and reward-vs-KL frontier
points. Sections: final numbers, the reward-vs-KL frontier (DPO paper Fig. 2: one point per
checkpoint, one line per method / beta / KL target), reward distributions, training curves,
reward-model accuracy / calibration / length bias with a reliability diagram, labeler agreement,
and sample completions side by side. Plots use matplotlib's object API (`Figure`, rendered by
Agg), never pyplot, so making a report neither needs a display nor changes a caller's backend.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Curves drawn from metrics.jsonl, one panel per group, only the keys a run actually logged
# (PPO/RLOO/GRPO: proxy/gold reward, seq_kl, length; DPO: losses, margins, sampled eval_kl /
# eval_gold; SFT: loss, eval_loss; reward: loss, eval_accuracy, eval_ece).
CURVE_GROUPS: list[tuple[str, list[str]]] = [
    ("reward (proxy vs gold)", ["proxy_reward", "gold_reward", "score", "eval_proxy", "eval_gold"]),
    ("KL to reference (nats)", ["seq_kl", "eval_seq_kl", "eval_kl"]),
    ("response length (tokens)", ["response_length", "eval_sample_length"]),
    ("loss", ["loss", "eval_loss"]),
    ("accuracy", ["accuracy", "eval_accuracy"]),
    ("implicit rewards / margins", ["rewards/chosen", "rewards/rejected", "margins", "margin",
                                    "eval_margins"]),
    ("calibration error", ["eval_ece"]),
    ("diversity / EOS", ["distinct_2", "eos_rate"]),
]


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _pm(v: Any, se: Any, digits: int = 3) -> str:
    return _fmt(v, digits) if se is None or v is None else f"{_fmt(v, digits)} ± {_fmt(se, digits)}"


def _cell(text: str) -> str:
    """A markdown table cell: no newline, no unescaped pipe."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip() or "(empty)"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "run"


def _figure(nrows: int = 1, ncols: int = 1, width: float = 5.0, height: float = 3.6):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, format="png")
    return path


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ----------------------------------------------------------------------------- frontier


def frontier_from_evaluation(evaluation: dict) -> list[dict]:
    """One frontier point per evaluated policy: {method, label, kl, gold, proxy}."""
    return [{"method": name, "label": name, "kl": m.get("kl"), "gold": m.get("gold_mean"),
             "proxy": m.get("rm_mean")} for name, m in evaluation.get("policies", {}).items()]


def plot_frontier(points: list[dict], path: Path) -> Path | None:
    """Reward (gold, and proxy when known) against KL to the reference, one line per method."""
    pts = [p for p in points if _finite(p.get("kl"))]
    panels = [k for k in ("gold", "proxy") if any(_finite(p.get(k)) for p in pts)]
    if not panels:
        return None
    fig, axes = _figure(1, len(panels))
    methods = list(dict.fromkeys(p.get("method", "") for p in pts))
    for ax, key in zip(axes, panels):
        for i, method in enumerate(methods):
            mine = sorted((p for p in pts if p.get("method", "") == method and _finite(p.get(key))),
                          key=lambda p: p["kl"])
            if not mine:
                continue
            ax.plot([p["kl"] for p in mine], [p[key] for p in mine], marker="o", color=f"C{i % 10}",
                    label=method or "policy")
            for p in mine:
                if p.get("label") and p.get("label") != method:
                    ax.annotate(str(p["label"]), (p["kl"], p[key]), fontsize=7, xytext=(3, 3),
                                textcoords="offset points")
        ax.set_xlabel("KL(policy || reference), nats per sequence")
        ax.set_ylabel(f"{key} reward")
        ax.set_title(f"{key} reward vs KL")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_distributions(evaluation: dict, path: Path) -> Path | None:
    """Box plots (q10/q25/median/q75/q90 and mean) of gold and proxy reward per policy."""
    pols = evaluation.get("policies", {})
    panels = [(k, t) for k, t in (("gold", "gold reward"), ("rm", "reward-model score"))
              if any(m.get(f"{k}_quantiles") for m in pols.values())]
    if not panels:
        return None
    fig, axes = _figure(1, len(panels), width=max(4.0, 1.2 * len(pols) + 2))
    for ax, (key, title) in zip(axes, panels):
        stats, names = [], []
        for name, m in pols.items():
            q = m.get(f"{key}_quantiles") or {}
            if not q:
                continue
            stats.append({"label": name, "med": q["q50"], "q1": q["q25"], "q3": q["q75"], "whislo": q["q10"],
                          "whishi": q["q90"], "mean": m[f"{key}_mean"], "fliers": []})
            names.append(name)
        ax.bxp(stats, showmeans=True)
        ax.set_title(f"{title} (whiskers: 10th-90th percentile)")
        ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


# ----------------------------------------------------------------------------- training curves


def curve_groups(rows: list[dict]) -> list[tuple[str, list[str]]]:
    """The panels a run gets: each CURVE_GROUPS entry reduced to the keys it logged (empty ones dropped)."""
    groups = []
    for label, keys in CURVE_GROUPS:
        present = [k for k in keys if any(_finite(r.get(k)) for r in rows)]
        if present:
            groups.append((label, present))
    return groups


def plot_curves(rows: list[dict], path: Path, title: str) -> Path | None:
    """One panel per metric group the run logged; each key drawn against `step` where present."""
    groups = curve_groups(rows)
    if not groups:
        return None
    ncols = min(3, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    fig, axes = _figure(nrows, ncols, width=4.5, height=3.2)
    for ax, (label, keys) in zip(axes, groups):
        for k in keys:
            pts = [(r["step"], r[k]) for r in rows if _finite(r.get(k)) and _finite(r.get("step"))]
            # Evaluation keys are logged sparsely: markers make single points visible.
            ax.plot([s for s, _ in pts], [v for _, v in pts], marker="o" if len(pts) < 20 else None,
                    markersize=3, label=k)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    fig.suptitle(title)
    return _save(fig, path)


# ----------------------------------------------------------------------------- reward models


def _reward_evals(run_dir: Path) -> list[tuple[str, dict]]:
    """eval.json of a reward run, or of each member of an ensemble run."""
    if (run_dir / "eval.json").is_file():
        return [("", json.loads((run_dir / "eval.json").read_text(encoding="utf-8")))]
    return [(p.parent.name, json.loads(p.read_text(encoding="utf-8")))
            for p in sorted(run_dir.glob("members/*/eval.json"))]


def plot_reliability(bins: list[dict], path: Path, title: str) -> Path | None:
    """Reliability diagram: accuracy per confidence bin against the diagonal, counts below."""
    used = [b for b in bins if b.get("count")]
    if not used:
        return None
    fig, (ax, axc) = _figure(2, 1, width=4.8, height=2.6)
    width = [b["hi"] - b["lo"] for b in used]
    ax.bar([b["lo"] for b in used], [b["accuracy"] for b in used], width=width, align="edge",
           edgecolor="k", alpha=0.7, label="accuracy")
    ax.plot([0.5, 1.0], [0.5, 1.0], "k--", label="perfect calibration")
    ax.plot([b["confidence"] for b in used], [b["accuracy"] for b in used], "o", color="C3",
            label="(confidence, accuracy)")
    ax.set_xlim(0.5, 1.0)
    ax.set_ylim(0.0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    axc.bar([b["lo"] for b in used], [b["count"] for b in used], width=width, align="edge", edgecolor="k")
    axc.set_xlim(0.5, 1.0)
    axc.set_xlabel("confidence max(p, 1-p) of the Bradley-Terry probability")
    axc.set_ylabel("pairs")
    return _save(fig, path)


# ----------------------------------------------------------------------------- markdown


def health_with_alarms(evaluation: dict, runs: dict[str, str | Path] | None) -> dict[str, dict]:
    """Per policy: the evaluation's sample-based verdict, redone with the alarms of the training run
    whose name ends with the policy's (e.g. run 'round1/rl-ppo' for policy 'rl-ppo')."""
    from rlhfkit.evaluate.metrics import health_verdict

    pols = evaluation.get("policies", {})
    ref = pols.get(evaluation.get("reference", ""), {})
    out = {}
    for name, m in pols.items():
        alarms = {}
        for run_name, run_dir in (runs or {}).items():
            summary = Path(run_dir) / "summary.json"
            if (run_name == name or run_name.endswith("/" + name)) and summary.is_file():
                alarms = json.loads(summary.read_text(encoding="utf-8")).get("alarms_fired") or {}
        out[name] = health_verdict(m, ref, alarms) if ref else (m.get("health") or {})
    return out


def _health_table(evaluation: dict, health: dict[str, dict]) -> list[str]:
    lines = ["| policy | verdict | distinct-2 vs reference | length vs reference | most repeated completion "
             "(share) | alarms fired | why |", "|---|---|---|---|---|---|---|"]
    for name, m in evaluation.get("policies", {}).items():
        h = health.get(name, {})
        top = m.get("top_completion")
        top_s = "–" if top is None else f"{_cell(top[:80])} ({_fmt(m.get('top_completion_share'), 2)})"
        alarms = ", ".join(f"{k} at step {v}" for k, v in (h.get("alarms_fired") or {}).items()) or "none"
        lines.append(f"| {_cell(name)} | **{h.get('verdict', '–')}** "
                     f"| {_fmt(h.get('distinct_2_vs_reference'), 2)} "
                     f"| {_fmt(h.get('length_vs_reference'), 2)} | {top_s} | {alarms} "
                     f"| {_cell('; '.join(h.get('reasons', [])) or '–')} |")
    return lines


def _gold_name(evaluation: dict) -> str:
    """What the gold was (evaluation["gold"]: rlhfkit.gold.describe_gold's string; True in files
    written before gold took a spec)."""
    gold = evaluation.get("gold")
    return gold if isinstance(gold, str) else ("synthetic world gold" if gold else "none")


def _final_table(evaluation: dict, health: dict[str, dict] | None = None) -> list[str]:
    ref = evaluation.get("reference", "reference")
    pols = evaluation.get("policies", {})
    has_gold = any("gold_mean" in m for m in pols.values())
    has_format = any("format_rate" in m for m in pols.values())  # the synthetic gold's grammar only
    has_rm = any("rm_mean" in m for m in pols.values())
    head = ["policy"]
    if has_gold:
        head += ["gold reward", f"gold win-rate vs {ref}"] + (["format"] if has_format else [])
    head += [f"KL to {ref} (nats)"]
    if has_rm:
        head += ["RM score", f"RM win-rate vs {ref}"]
    head += ["length (tokens)", "length (words)", "distinct-1", "distinct-2", "EOS", "health"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in pols.items():
        row = [_cell(name)]
        if has_gold:
            row += [_pm(m.get("gold_mean"), m.get("gold_std")), _pm(m.get("win_rate"), m.get("win_rate_se"))]
            row += [_fmt(m.get("format_rate"), 2)] if has_format else []
        row += [_pm(m.get("kl"), m.get("kl_se"), 2)]
        if has_rm:
            row += [_pm(m.get("rm_mean"), m.get("rm_std")),
                    _pm(m.get("rm_win_rate"), m.get("rm_win_rate_se"))]
        verdict = ((health or {}).get(name) or m.get("health") or {}).get("verdict", "–")
        row += [_fmt(m.get("length_tokens"), 1), _fmt(m.get("length_words"), 1), _fmt(m.get("distinct_1")),
                _fmt(m.get("distinct_2")), _fmt(m.get("eos_rate"), 2), verdict]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out += _flatten(v, key + ".")
        elif isinstance(v, (list, tuple)):
            out.append((key, ", ".join(_fmt(x) for x in v) if len(v) <= 8 else f"[{len(v)} values]"))
        else:
            out.append((key, v))
    return out


def _samples_section(evaluation: dict) -> list[str]:
    lines = []
    for j, entry in enumerate(evaluation.get("samples", []), start=1):
        lines += [f"### Prompt {j}: `{_cell(entry['prompt'])}`", "",
                  "| policy | completion | gold | RM | EOS |", "|---|---|---|---|---|"]
        for name, shown in entry["completions"].items():
            for s in shown:
                lines.append(f"| {_cell(name)} | {_cell(s['text'])} | {_fmt(s.get('gold'))} "
                             f"| {_fmt(s.get('rm'))} | {'yes' if s.get('ended_with_eos') else 'no'} |")
        lines.append("")
    return lines


def write_report(output_dir: str | Path, *, evaluation: dict, runs: dict[str, str | Path] | None = None,
                 reward_runs: dict[str, str | Path] | None = None, agreement: dict | None = None,
                 frontier: list[dict] | None = None, title: str = "rlhfkit report",
                 feedback_sources: list[str] | None = None) -> Path:
    """Write ``output_dir/report.md`` and its PNGs under ``output_dir/plots``; return the report path.

    ``frontier`` is a list of points {method, label, kl, gold, proxy} (one per checkpoint); when
    None, one point per evaluated policy is derived from ``evaluation``. Image links are relative
    to the report, so the directory can be moved or published as is.
    """
    from rlhfkit.train.common import read_metrics

    out = Path(output_dir)
    plots = out / "plots"
    out.mkdir(parents=True, exist_ok=True)

    def img(path: Path | None, alt: str) -> list[str]:
        return [f"![{alt}]({path.relative_to(out).as_posix()})", ""] if path is not None else []

    ref = evaluation.get("reference", "reference")
    md = [f"# {title}", ""]
    md += [f"{evaluation.get('prompts', '?')} held-out prompts x {evaluation.get('num_samples', 1)} "
           f"sample(s) per policy (temperature {evaluation.get('temperature', '?')}, at most "
           f"{evaluation.get('max_new_tokens', '?')} new tokens, seed {evaluation.get('seed', '?')}); every "
           "policy sampled the same prompts. "
           f"Win rates pair each sample with the reference ({ref}) sample of the same prompt, ties count "
           "half, "
           "± one standard error. KL is the sequence KL(policy || reference) estimated from the policy's own "
           f"samples. Reward model: {evaluation.get('reward_model') or 'none'}. "
           f"Gold: {_gold_name(evaluation)}.", ""]

    health = health_with_alarms(evaluation, runs)
    md += ["## Final numbers", "", *_final_table(evaluation, health), ""]
    md += ["## Health", "", "Is each policy's output still worth reading? Diversity and length next to the "
           f"reference ({ref}), the most repeated completion, the training run's alarms (first step each "
           "kind fired), and a verdict: 'collapsed' (distinct-2 under half the reference's, one completion "
           "over half the samples, or a collapse alarm), 'reward hacked: proxy up, gold down', or 'healthy'.",
           "", *_health_table(evaluation, health), ""]

    points = frontier if frontier is not None else frontier_from_evaluation(evaluation)
    md += ["## Reward vs KL frontier", ""]
    fr = plot_frontier(points, plots / "frontier.png")
    md += img(fr, "reward vs KL frontier")
    if points:
        # One block per method, its points sorted by KL: read down a block to walk along its frontier.
        order = list(dict.fromkeys(str(p.get("method", "")) for p in points))
        points = sorted(points, key=lambda p: (order.index(str(p.get("method", ""))),
                                               p["kl"] if _finite(p.get("kl")) else math.inf))
        md += ["| method | label | KL | gold | proxy |", "|---|---|---|---|---|"]
        md += [f"| {_cell(str(p.get('method', '')))} | {_cell(str(p.get('label', '')))} "
               f"| {_fmt(p.get('kl'), 2)} | {_fmt(p.get('gold'))} | {_fmt(p.get('proxy'))} |" for p in points]
        md.append("")
    if fr is None:
        md += ["(no point has both a KL and a reward: nothing to plot)", ""]

    dist = plot_distributions(evaluation, plots / "reward_distributions.png")
    if dist is not None:
        md += ["## Reward distributions", "", *img(dist, "reward distributions")]

    if runs:
        md += ["## Training curves", ""]
        for name, run_dir in runs.items():
            md += [f"### {name}", ""]
            try:
                rows = read_metrics(run_dir)
            except (OSError, ValueError) as e:  # a missing or torn metrics.jsonl must not lose the report
                log.warning("report: no curves for %s: %s", name, e)
                md += [f"(no readable metrics.jsonl in `{run_dir}`: {e})", ""]
                continue
            p = plot_curves(rows, plots / f"curves_{_slug(name)}.png", name)
            md += img(p, f"{name} training curves") or [f"(no plottable metrics in `{run_dir}`)", ""]
            summary = Path(run_dir) / "summary.json"
            if summary.is_file():
                s = json.loads(summary.read_text(encoding="utf-8"))
                keys = [k for k in ("stage", "steps", "loss_type", "beta", "estimator", "final_kl_coef",
                                    "initial_eval_loss", "final_eval_loss") if s.get(k) is not None]
                if keys:
                    md += ["; ".join(f"{k}: {_fmt(s[k])}" for k in keys), ""]

    if reward_runs:
        md += ["## Reward models: accuracy, calibration, length bias", "",
               "| reward model | pairs | accuracy | ECE | length corr | acc (chosen longer) "
               "| acc (chosen shorter) | length gap |", "|---|---|---|---|---|---|---|---|"]
        diagrams = []
        for name, run_dir in reward_runs.items():
            for member, ev in _reward_evals(Path(run_dir)):
                label = f"{name} {member}".strip()
                cells = [_cell(label)] + [_fmt(ev.get(f"eval_{k}")) for k in (
                    "pairs", "accuracy", "ece", "length_corr", "acc_chosen_longer", "acc_chosen_shorter",
                    "length_gap")]
                md.append("| " + " | ".join(cells) + " |")
                if ev.get("reliability_bins"):
                    p = plot_reliability(ev["reliability_bins"], plots / f"reliability_{_slug(label)}.png",
                                         f"{label}: ECE {_fmt(ev.get('eval_ece'))}")
                    diagrams += img(p, f"{label} reliability diagram")
        md += ["", *diagrams]

    if agreement:
        md += ["## Labeler agreement", "", "| statistic | value |", "|---|---|"]
        md += [f"| {_cell(k)} | {_cell(_fmt(v))} |" for k, v in _flatten(agreement)]
        md.append("")
    if feedback_sources:  # markdown lines of rlhfkit.feedback.calibration.feedback_sources_markdown
        md += [*feedback_sources, ""]

    if evaluation.get("samples"):
        md += ["## Sample completions", "", *_samples_section(evaluation)]

    report = out / "report.md"
    report.write_text("\n".join(md).rstrip() + "\n", encoding="utf-8")
    return report
