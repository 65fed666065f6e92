"""Judge–human calibration (rlhfkit.feedback.calibration): kappas against hand-computed values on a
tiny table, the seeded bootstrap, the export gate on a constructed store (a good judge kept, a noisy
one dropped), the admin calibration page and the report's "Feedback sources" section."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from fastapi.testclient import TestClient

from rlhfkit.config import LabelExportConfig
from rlhfkit.feedback import calibration as C
from rlhfkit.feedback.export import export, export_rows
from rlhfkit.feedback.store import FeedbackStore

# ---------------------------------------------------------------------------------------------
# a tiny table, by hand

# Four pair tasks; people h1, h2, h3 and one judge J (canonical choices).
TINY = {
    "h1": "ABAB",
    "h2": "ABBB",
    "h3": "BBAB",
    "J": "AAAB",
}
IDS = {"h1": 1, "h2": 2, "h3": 3, "J": 9}
ROLES = {1: "annotator", 2: "annotator", 3: "admin", 9: "judge"}


def _js(table: dict[str, str], gold: dict[int, str] | None = None) -> list[dict]:
    gold = gold or {}
    return [{"task_id": t, "annotator": name, "annotator_id": IDS.get(name, hash(name) % 10_000),
             "kind": "pair", "choice": c, "ranking": None, "response_ids": [10 * t, 10 * t + 1],
             "gold_answer": {"choice": gold[t], "ranking": None} if t in gold else None}
            for name, labels in table.items() for t, c in enumerate(labels, start=1)]


def test_kappas_match_hand_computed_values_on_a_tiny_table():
    # Human majority per task: A A B -> A, B B B -> B, A B A -> A, B B B -> B, i.e. "ABAB".
    # J = AAAB vs ABAB: agrees on tasks 1, 3, 4 -> 3/4. Marginals J (A3, B1), majority (A2, B2):
    # p_e = (3*2 + 1*2) / 16 = 1/2, kappa = (3/4 - 1/2) / (1/2) = 1/2.
    # People pairwise (4 shared tasks each):
    #   h1 ABAB / h2 ABBB: p_o 3/4, p_e (2*1 + 2*3)/16 = 1/2 -> 1/2
    #   h1 ABAB / h3 BBAB: p_o 3/4, p_e (2*1 + 2*3)/16 = 1/2 -> 1/2
    #   h2 ABBB / h3 BBAB: p_o 2/4, p_e (1*1 + 3*3)/16 = 5/8 -> (1/2 - 5/8)/(3/8) = -1/3
    #   mean = (1/2 + 1/2 - 1/3) / 3 = 2/9
    # Gold on task 2 (answer B): J said A -> 0; every person said B -> 1.
    cal = C.calibrate(_js(TINY, gold={2: "B"}), ROLES, min_tasks=4, n_boot=0)
    (j,) = cal.judges
    assert (j.judge, j.n_shared, j.judgements) == ("J", 4, 4)
    assert j.agreement == pytest.approx(0.75)
    assert j.kappa == pytest.approx(0.5)
    assert cal.human_kappa == pytest.approx(2 / 9)
    assert cal.human_pairs == 3 and cal.humans == ["h1", "h2", "h3"]
    assert (j.gold_n, j.gold_accuracy, cal.human_gold_accuracy) == (1, 0.0, 1.0)
    # the matrix: h1 ABAB vs J AAAB -> agreement 3/4, kappa 1/2 (same marginals as above)
    agree, kappa, n = cal.matrix[("h1", "J")]
    assert (agree, n) == (0.75, 4) and kappa == pytest.approx(0.5)
    assert cal.counts == {"human": {"annotators": 3, "judgements": 12, "tasks": 4},
                          "judge": {"annotators": 1, "judgements": 4, "tasks": 4}}
    # the gate: 1/2 >= 2/9 - 0.1 keeps J; with 5 tasks required J (and the people) share too few
    (d,) = C.gate(cal, "calibrated", 0.1)
    assert d.kept and "0.500 >= human-human kappa 0.222" in d.reason
    (d,) = C.gate(C.calibrate(_js(TINY), ROLES, min_tasks=5, n_boot=0), "calibrated", 0.1)
    assert not d.kept and "too few tasks shared with people" in d.reason and "4 < 5" in d.reason
    assert [x.kept for x in C.gate(cal, "none")] == [False] and [x.kept for x in C.gate(cal, "all")] == [True]


def test_undefined_human_kappa_drops_judges_with_that_reason():
    # Two people who never share a task: no human-human kappa to compare with.
    table = {"h1": "AB" + "--", "h2": "--" + "BA", "J": "ABBA"}
    js = [j for j in _js(table) if j["choice"] != "-"]
    cal = C.calibrate(js, ROLES, min_tasks=2, n_boot=0)
    assert math.isnan(cal.human_kappa) and cal.human_pairs == 0
    (d,) = C.gate(cal, "calibrated", 0.1)
    assert not d.kept and "human-human kappa cannot be estimated" in d.reason


# ---------------------------------------------------------------------------------------------
# a constructed project: consistent people, a good judge and a noisy one

N_TASKS = 80


def _constructed_labels(seed: int = 0) -> dict[str, list[str]]:
    """Truth random A/B; three people right on 90% each (different tasks wrong, so the majority is
    the truth); the good judge differs from the majority on every 10th task, the noisy one on 45%."""
    rng = np.random.default_rng(seed)
    truth = ["A" if x else "B" for x in rng.integers(0, 2, N_TASKS)]
    flip = {"A": "B", "B": "A"}
    out = {}
    for k, name in enumerate(("alice", "bob", "carol")):
        out[name] = [flip[t] if i % 10 == 3 * k else t for i, t in enumerate(truth)]
    out["good-judge"] = [flip[t] if i % 10 == 5 else t for i, t in enumerate(truth)]
    wrong = set(rng.permutation(N_TASKS)[: int(0.45 * N_TASKS)].tolist())
    out["noisy-judge"] = [flip[t] if i in wrong else t for i, t in enumerate(truth)]
    return out


@pytest.fixture(scope="module")
def constructed(tmp_path_factory):
    s = FeedbackStore(tmp_path_factory.mktemp("calib") / "fb.db")
    s.create_project("p", annotators_per_task=5)
    labels = _constructed_labels()
    roles = {"alice": "annotator", "bob": "annotator", "carol": "admin", "good-judge": "judge",
             "noisy-judge": "judge"}
    who = {n: s.add_annotator(n, f"{n}-password", role=r) for n, r in roles.items()}
    tasks = []
    for i in range(N_TASKS):
        pid = s.add_prompt("p", f"prompt {i}")
        rids = [s.add_response(pid, f"answer {i} by {m}", m) for m in ("m1", "m2")]
        tasks.append((s.create_task("p", rids), rids))
    for name, row in labels.items():
        for (tid, rids), choice in zip(tasks, row):
            s.submit(tid, who[name].id, choice=choice, displayed_order=rids)
    yield s, labels
    s.close()


def test_the_gate_keeps_the_good_judge_and_drops_the_noisy_one(constructed, tmp_path):
    store, labels = constructed
    cal = C.calibrate(store.judgements("p"), C.roles_of(store), n_boot=0)
    good, noisy = cal.judge("good-judge"), cal.judge("noisy-judge")
    assert good.n_shared == noisy.n_shared == N_TASKS and cal.tasks_with_majority == N_TASKS
    assert good.agreement == pytest.approx(0.9) and noisy.agreement == pytest.approx(0.55)
    assert good.kappa > cal.human_kappa - 0.1 > noisy.kappa
    rows, stats = export_rows(store, "p", judges="calibrated", judge_margin=0.1)
    assert {r["annotator"] for r in rows} == {"alice", "bob", "carol", "good-judge"}
    assert len(rows) == 4 * N_TASKS and stats["rows"] == 4 * N_TASKS
    assert stats["judges_kept"] == 1 and stats["judges_dropped"] == 1
    assert stats["judgements_excluded_judge_gate"] == N_TASKS
    gate = {d["judge"]: d for d in stats["judge_gate"]}
    assert gate["good-judge"]["kept"] and not gate["noisy-judge"]["kept"]
    for d in gate.values():  # the summary says why: the judge's kappa, the human kappa and the margin
        assert d["human_kappa"] == pytest.approx(cal.human_kappa) and d["margin"] == 0.1
        assert f"{d['kappa']:.3f}" in d["reason"] and f"{cal.human_kappa:.3f}" in d["reason"]
    assert gate["noisy-judge"]["kappa"] == pytest.approx(noisy.kappa)
    # all / none, and the majority export built on the gated judgements
    assert len(export_rows(store, "p")[0]) == 5 * N_TASKS
    assert {r["annotator"] for r in export_rows(store, "p", judges="none")[0]} == {"alice", "bob", "carol"}
    majority, _ = export_rows(store, "p", aggregate="majority", judges="calibrated")
    assert all("noisy-judge" not in r["annotators"] for r in majority) and len(majority) == N_TASKS
    # a huge margin keeps both; too few shared tasks drops both with that reason
    assert export_rows(store, "p", judges="calibrated", judge_margin=2.0)[1]["judges_dropped"] == 0
    few = export_rows(store, "p", judges="calibrated", judge_min_tasks=N_TASKS + 1)[1]
    assert few["judges_dropped"] == 2 and all("too few" in d["reason"] for d in few["judge_gate"])
    # through the stage's config, as `rlhf label export judges=calibrated` runs it
    out = export(LabelExportConfig(store=store.url, project="p", output=str(tmp_path / "prefs.jsonl"),
                                   judges="calibrated", judge_margin=0.1))
    assert len(out.read_text().splitlines()) == 4 * N_TASKS


def test_bootstrap_interval_is_seeded_and_contains_the_point_estimate(constructed):
    store, _ = constructed
    js, roles = store.judgements("p"), C.roles_of(store)
    a = C.calibrate(js, roles, n_boot=100, seed=7)
    b = C.calibrate(js, roles, n_boot=100, seed=7)
    c = C.calibrate(js, roles, n_boot=100, seed=8)
    assert a == b  # same seed, same intervals (dataclass equality compares every field)
    assert a.judge("good-judge").kappa_ci != c.judge("good-judge").kappa_ci
    for j in a.judges:
        for value, (lo, hi) in ((j.kappa, j.kappa_ci), (j.agreement, j.agreement_ci)):
            assert lo <= value <= hi and lo < hi
    lo, hi = a.human_kappa_ci
    assert lo <= a.human_kappa <= hi
    # the good judge's interval lies above the noisy one's: 80 tasks separate 90% from 55%
    assert a.judge("good-judge").kappa_ci[0] > a.judge("noisy-judge").kappa_ci[1]


def test_feedback_sources_section(constructed):
    store, _ = constructed
    md = "\n".join(C.feedback_sources(store.url, "p", margin=0.1, n_boot=20))
    assert md.startswith("## Feedback sources")
    assert f"| people | 3 | {3 * N_TASKS} | {N_TASKS} |" in md
    assert f"| AI judges | 2 | {2 * N_TASKS} | {N_TASKS} |" in md
    assert re.search(r"\| good-judge \| 80 \| 0\.900 \[.*\| yes \|", md)
    assert re.search(r"\| noisy-judge \| 80 \| 0\.550 \[.*\| no \|", md)
    assert "| person | good-judge | noisy-judge |" in md and "| alice | 0.80 / " in md
    assert "kept good-judge; dropped noisy-judge." in md


def test_pipeline_report_writes_the_feedback_sources_section(constructed, tmp_path):
    from rlhfkit.evaluate.report import write_report

    store, _ = constructed
    lines = C.feedback_sources(store.url, "p", n_boot=10)
    report = write_report(tmp_path, evaluation={"policies": {}}, feedback_sources=lines)
    assert "## Feedback sources" in report.read_text()
    from rlhfkit.pipeline.report import feedback_sources

    spec = {"store": store.url, "project": "p", "seed": 0}
    assert feedback_sources(spec)[0] == "## Feedback sources"
    plain = FeedbackStore(tmp_path / "people.db")  # people only: the agreement section says it all
    plain.create_project("q")
    assert feedback_sources({"store": plain.url, "project": "q"}) is None
    plain.close()


# ---------------------------------------------------------------------------------------------
# the admin page


def test_admin_calibration_page_renders(constructed):
    from rlhfkit.feedback.app import create_app

    store, _ = constructed
    if store.get_annotator("root") is None:
        store.add_annotator("root", "root-pw-123", role="admin")
    app = create_app(store.url, secret="calib-secret", store=store)
    client = TestClient(app, client=("10.0.0.9", 5000))
    r = client.post("/login", data={"name": "root", "password": "root-pw-123"}, follow_redirects=False)
    assert r.status_code == 303
    assert 'id="calibration-link"' in client.get("/admin/projects/p").text
    page = client.get("/admin/projects/p/calibration")
    assert page.status_code == 200, page.text
    good = re.search(r'<tr class="judge" id="judge-\d+">.*?good-judge.*?</tr>', page.text, re.S).group(0)
    noisy = re.search(r'<tr class="judge" id="judge-\d+">.*?noisy-judge.*?</tr>', page.text, re.S).group(0)
    assert ">kept<" in good and "dropped" in noisy and "0.900" in good
    assert 'id="human-kappa"' in page.text and 'id="calibration-matrix"' in page.text
    data = client.get("/admin/projects/p/calibration.json?margin=0.1").json()
    assert {g["judge"]: g["kept"] for g in data["gate"]} == {"good-judge": True, "noisy-judge": False}
    assert data["judges"][0]["n_shared"] == N_TASKS and len(data["matrix"]) == 6
    exported = client.get("/admin/projects/p/export?judges=calibrated")
    assert exported.status_code == 200 and "noisy-judge" not in exported.text
    annotator = TestClient(app, client=("10.0.0.8", 5000))
    annotator.post("/login", data={"name": "alice", "password": "alice-password"}, follow_redirects=False)
    assert annotator.get("/admin/projects/p/calibration").status_code == 403
