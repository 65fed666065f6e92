"""Labels weighted by reliability: Dawid-Skene (rlhfkit.feedback.aggregate), the export's soft labels,
and the soft-label reward / DPO losses that train on them, against hand-computed values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rlhfkit.config import LabelExportConfig
from rlhfkit.feedback.aggregate import MISSING, dawid_skene, fit_pair_labels, majority_posterior
from rlhfkit.feedback.export import export, export_rows
from rlhfkit.feedback.store import FeedbackStore
from rlhfkit.losses import bradley_terry_loss, bt_with_ties_loss, dpo_loss

ACCURACIES = np.array([0.95, 0.85, 0.7, 0.6, 0.55])


def simulated_crowd(n_items: int = 300, seed: int = 0):
    """Binary true labels and 5 annotators who are right with ACCURACIES, independently."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, n_items)  # (I,)
    right = rng.random((n_items, len(ACCURACIES))) < ACCURACIES  # (I, A)
    return truth, right, np.where(right, truth[:, None], 1 - truth[:, None])


# ---------------------------------------------------------------------------------------------
# Dawid-Skene


def test_dawid_skene_recovers_annotator_accuracies_and_beats_majority_vote():
    truth, right, labels = simulated_crowd()
    res = dawid_skene(labels)
    assert res.converged and res.posterior.shape == (300, 2) and res.confusion.shape == (5, 2, 2)
    # against each annotator's realised accuracy on these 300 items (what the data can tell) ...
    assert np.abs(res.accuracy - right.mean(axis=0)).max() <= 0.05
    # ... and against the nominal ones (adds the sampling noise of 300 draws: sd up to 0.029)
    assert np.abs(res.accuracy - ACCURACIES).max() <= 0.08
    assert list(np.argsort(-res.accuracy)) == [0, 1, 2, 3, 4]
    ds_acc = (res.posterior.argmax(axis=1) == truth).mean()
    mv_acc = (majority_posterior(labels).argmax(axis=1) == truth).mean()
    assert ds_acc > mv_acc + 0.03, (ds_acc, mv_acc)  # 0.957 vs 0.900 on this seed
    np.testing.assert_allclose(res.posterior.sum(axis=1), 1.0)
    # deterministic: majority-vote start, no random numbers
    again = dawid_skene(labels)
    np.testing.assert_array_equal(res.posterior, again.posterior)


def test_smoothing_keeps_an_annotator_with_one_label_from_certainty():
    _, _, labels = simulated_crowd(100)
    once = np.full((100, 1), MISSING)
    once[0, 0] = 1 - labels[0, 0]  # a newcomer with a single label, against the best annotator
    res = dawid_skene(np.hstack([labels, once]))
    # plain ML would give confusion exactly 1.0 on that row; with Dirichlet(2) pseudo-counts it is 2/3
    assert res.confusion[5].max() < 0.7 and res.n_labels[5] == 1
    assert 0.4 < res.accuracy[5] < 0.7
    assert res.posterior[0].argmax() == labels[0, :2].max()  # the crowd still decides item 0
    no_smoothing = dawid_skene(np.hstack([labels, once]), smoothing=0.0)
    assert no_smoothing.confusion[5].max() == pytest.approx(1.0)


def test_ties_are_an_answer_not_a_class_and_missing_entries():
    # two reliable annotators, and one who always says "tie" (answer 2): the tie carries no evidence
    truth = np.array([0, 1] * 20)
    labels = np.stack([truth, truth, np.full(40, 2)], axis=1)
    labels[::5, 1] = MISSING
    res = dawid_skene(labels)
    assert res.confusion.shape == (3, 2, 3)
    assert (res.posterior.argmax(axis=1) == truth).all()
    assert res.accuracy[2] < 0.05  # never gives a class
    np.testing.assert_allclose(res.confusion[2, 0], res.confusion[2, 1], atol=0.03)  # same tie rate per class


def test_dawid_skene_rejects_bad_input():
    with pytest.raises(ValueError, match="2-d integer"):
        dawid_skene(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="answers must be"):
        dawid_skene(np.array([[0, -2]]))
    with pytest.raises(ValueError, match="answers must be"):
        dawid_skene(np.array([[0, 3]]), n_answers=3)


def test_fit_pair_labels_maps_store_labels():
    items = {("t", k): {"x": "A" if k % 2 else "B", "y": "A" if k % 2 else "B", "z": "tie_good"}
             for k in range(40)}
    post, table = fit_pair_labels(items, {"x": "ann-x"})
    assert all((p > 0.9) if k % 2 else (p < 0.1) for (_, k), p in post.items())
    by = {r["annotator_id"]: r for r in table}
    assert by["x"]["annotator"] == "ann-x" and by["x"]["labels"] == 40 and by["z"]["tie_rate"] == 1.0
    assert by["x"]["accuracy"] > 0.85 and by["z"]["accuracy"] < 0.1  # (20 + 1) / (20 + 3), 1 / 23


# ---------------------------------------------------------------------------------------------
# export on a real store


@pytest.fixture
def crowd_store(tmp_path):
    """60 pair tasks, 5 annotators with the crowd's accuracies against a known better response
    (response 0 of each task is better on even tasks, response 1 on odd ones), seeded."""
    rng = np.random.default_rng(1)
    s = FeedbackStore(tmp_path / "fb.db")
    s.create_project("p", annotators_per_task=5)
    anns = [s.add_annotator(f"ann{k}", "pw") for k in range(5)]
    truth = {}
    for t in range(60):
        pid = s.add_prompt("p", f"prompt {t}")
        r = [s.add_response(pid, f"answer {t} {i}", f"model{i}") for i in range(2)]
        task = s.create_task("p", r)
        truth[task] = f"answer {t} {t % 2}"
        for a, acc in zip(anns, ACCURACIES, strict=True):
            good = "A" if t % 2 == 0 else "B"
            choice = good if rng.random() < acc else ("B" if good == "A" else "A")
            s.submit(task, a.id, choice=choice, strength=3, displayed_order=r)
    yield s, truth
    s.close()


def test_export_dawid_skene_writes_soft_labels_and_reliabilities(crowd_store, tmp_path):
    s, truth = crowd_store
    rows, stats = export_rows(s, "p", aggregate="dawid_skene")
    assert len(rows) == 60 and stats["rows"] == 60
    assert all(0.5 < r["label_confidence"] <= 1.0 for r in rows)
    assert all(r["n_annotators"] == 5 and r["tie"] is False for r in rows)
    ds_right = np.mean([r["chosen"] == truth[r["task_id"]] for r in rows])
    majority, _ = export_rows(s, "p", aggregate="majority")
    mv_right = np.mean([r["chosen"] == truth[r["task_id"]] for r in majority])
    assert ds_right >= mv_right and ds_right >= 0.9
    table = {a["annotator"]: a for a in stats["dawid_skene_annotators"]}
    assert set(table) == {f"ann{k}" for k in range(5)} and all(a["labels"] == 60 for a in table.values())
    assert table["ann0"]["accuracy"] > table["ann4"]["accuracy"]
    assert table["ann0"]["accuracy"] > 0.85
    # the confident rows are the ones the crowd agrees on
    agree = [r["label_confidence"] for r in rows if r["agreement"] == 1.0]
    split = [r["label_confidence"] for r in rows if r["agreement"] == 0.6]
    assert agree and split and np.mean(agree) > np.mean(split)

    # the file: TRL's columns plus label_confidence, which the data layer keeps
    from rlhfkit.data.formats import normalize
    from rlhfkit.data.loading import read_records

    out = export(LabelExportConfig(store=s.url, project="p", output=str(tmp_path / "prefs.jsonl"),
                                   aggregate="dawid_skene"))
    first = json.loads(out.read_text().splitlines()[0])
    assert {"prompt", "chosen", "rejected", "label_confidence", "margin"} <= set(first)
    normed, _ = normalize(read_records(out), "preference", source=str(out))
    assert len(normed) == 60 and all(0.5 < r["label_confidence"] <= 1.0 for r in normed)
    with pytest.raises(ValueError, match="rankings=pairs"):
        export_rows(s, "p", aggregate="dawid_skene", rankings="ranking")


def test_export_dawid_skene_ties(tmp_path):
    s = FeedbackStore(tmp_path / "fb.db")
    s.create_project("p", annotators_per_task=2)
    pid = s.add_prompt("p", "the prompt")
    r = [s.add_response(pid, f"resp {i}", "m") for i in range(4)]
    t1, t2 = s.create_task("p", r[:2]), s.create_task("p", r[2:])
    x, y = s.add_annotator("x", "pw"), s.add_annotator("y", "pw")
    for a in (x, y):
        s.submit(t1, a.id, choice="tie_good", displayed_order=r[:2])
    s.submit(t2, x.id, choice="B", displayed_order=r[2:])
    s.submit(t2, y.id, choice="tie_bad", displayed_order=r[2:])
    rows, stats = export_rows(s, "p", aggregate="dawid_skene")
    assert stats["ties_dropped"] == 1 and len(rows) == 1
    assert rows[0]["chosen"] == "resp 3" and rows[0]["label_confidence"] > 0.5
    kept, _ = export_rows(s, "p", aggregate="dawid_skene", ties="keep")
    tie = [row for row in kept if row["tie"]]
    assert len(tie) == 1 and tie[0]["label_confidence"] == 0.5 and tie[0]["tie_kind"] == "tie_good"
    s.close()


# ---------------------------------------------------------------------------------------------
# soft-label losses, by hand


def sp(x: float) -> float:
    return math.log1p(math.exp(x))


def test_bradley_terry_soft_targets_by_hand():
    rc, rr = torch.tensor([2.0, 0.5]), torch.tensor([1.0, 1.5])  # d = 1, -1
    c = torch.tensor([0.8, 0.6])
    loss, _ = bradley_terry_loss(rc, rr, confidence=c)
    want = ((0.8 * sp(-1) + 0.2 * sp(1)) + (0.6 * sp(1) + 0.4 * sp(-1))) / 2
    assert loss.item() == pytest.approx(want, rel=1e-6)  # 0.8 * 0.31326 + 0.2 * 1.31326 = 0.51326, ...
    # with a margin m each direction must clear it: -[c log s(d - m) + (1 - c) log s(-d - m)]
    loss_m, _ = bradley_terry_loss(rc[:1], rr[:1], margin=torch.tensor([0.5]), confidence=c[:1])
    assert loss_m.item() == pytest.approx(0.8 * sp(-0.5) + 0.2 * sp(1.5), rel=1e-6)
    # c = 1 is the hard loss exactly, margins and weights included
    w, m = torch.tensor([1.0, 3.0]), torch.tensor([0.3, 0.0])
    hard, _ = bradley_terry_loss(rc, rr, margin=m, weights=w)
    soft1, _ = bradley_terry_loss(rc, rr, margin=m, weights=w, confidence=torch.ones(2))
    assert torch.equal(hard, soft1)


def test_bradley_terry_soft_target_gradients():
    # dl/dd = sigmoid(d) - c: zero where sigmoid(d) = c, and for c = 0.5 at d = 0 whatever the margin
    d = torch.tensor([0.0, 1.0, -2.0], requires_grad=True)
    c = torch.tensor([0.5, 0.8, 0.3])
    loss, _ = bradley_terry_loss(d, torch.zeros(3), confidence=c)
    loss.backward()
    want = (torch.sigmoid(d.detach()) - c) / 3
    torch.testing.assert_close(d.grad, want)
    assert d.grad[0].item() == 0.0
    d0 = torch.zeros(1, requires_grad=True)
    half = torch.tensor([0.5])
    loss0, _ = bradley_terry_loss(d0, torch.zeros(1), margin=torch.tensor([0.7]), confidence=half)
    loss0.backward()
    assert d0.grad.item() == pytest.approx(0.0, abs=1e-7)


def test_bt_with_ties_soft_win_rows_by_hand():
    theta = 1.5
    rc, rr = torch.tensor([1.0, 0.2]), torch.tensor([0.0, 0.0])
    is_tie = torch.tensor([False, True])
    c = torch.tensor([0.7, 0.9])  # ignored on the tie row
    loss, _ = bt_with_ties_loss(rc, rr, is_tie, theta, "rao_kupper", confidence=c)
    lt = math.log(theta)
    log_win = -sp(-(1.0 - lt))  # log sigmoid(d - log theta)
    log_loss = -sp(1.0 + lt)  # log sigmoid(-d - log theta)
    log_tie = math.log(theta ** 2 - 1) - sp(-(0.2 - lt)) - sp(0.2 + lt)
    want = (-(0.7 * log_win + 0.3 * log_loss) - log_tie) / 2
    assert loss.item() == pytest.approx(want, rel=1e-6)
    hard, _ = bt_with_ties_loss(rc, rr, is_tie, theta, "rao_kupper")
    soft1, _ = bt_with_ties_loss(rc, rr, is_tie, theta, "rao_kupper", confidence=torch.ones(2))
    assert torch.equal(hard, soft1)


def test_dpo_soft_labels_are_per_pair_cdpo_by_hand():
    # h = (pc - rc) - (pr - rr) = 2, beta 0.1: beta h = 0.2
    pc, pr = torch.tensor([-3.0]), torch.tensor([-5.0])
    ref_c, ref_r = torch.tensor([-4.0]), torch.tensor([-4.0])
    c = torch.tensor([0.8])
    loss, _ = dpo_loss(pc, pr, ref_c, ref_r, beta=0.1, confidence=c)
    assert loss.item() == pytest.approx(0.8 * sp(-0.2) + 0.2 * sp(0.2), rel=1e-6)  # 0.638139
    # cdpo's label_smoothing eps0 composes with eps_i = 1 - c as independent flips:
    # eps = 0.1 * 0.8 + 0.2 * 0.9 = 0.26
    loss_c, _ = dpo_loss(pc, pr, ref_c, ref_r, loss_type="cdpo", label_smoothing=0.1, beta=0.1, confidence=c)
    assert loss_c.item() == pytest.approx(0.74 * sp(-0.2) + 0.26 * sp(0.2), rel=1e-6)  # 0.650139
    # c = 1 is plain DPO (and plain cDPO) exactly
    for kw in ({}, {"loss_type": "cdpo", "label_smoothing": 0.1}):
        plain, _ = dpo_loss(pc, pr, ref_c, ref_r, beta=0.1, **kw)
        assert torch.equal(plain, dpo_loss(pc, pr, ref_c, ref_r, beta=0.1, confidence=torch.ones(1), **kw)[0])
    with pytest.raises(ValueError, match="sigmoid' and 'cdpo' only"):
        dpo_loss(pc, pr, ref_c, ref_r, loss_type="ipo", chosen_tokens=torch.ones(1),
                 rejected_tokens=torch.ones(1), confidence=c)


def test_dpo_half_confidence_has_no_gradient_at_the_reference():
    # step 0: policy = reference, h = 0; with c = 0.5 the pair pushes neither way (and the loss is ln 2)
    pc = torch.tensor([-3.0, -2.0], requires_grad=True)
    pr = torch.tensor([-5.0, -1.0], requires_grad=True)
    loss, _ = dpo_loss(pc, pr, pc.detach().clone(), pr.detach().clone(), beta=0.1,
                       confidence=torch.tensor([0.5, 0.5]))
    loss.backward()
    assert loss.item() == pytest.approx(math.log(2))
    assert pc.grad.abs().max().item() == 0.0 and pr.grad.abs().max().item() == 0.0
    # and the gradient of -[c log s(bh) + (1-c) log s(-bh)] in h is beta (sigmoid(beta h) - c)
    h = torch.tensor([3.0], requires_grad=True)
    zero = torch.zeros(1)
    loss_h, _ = dpo_loss(h, zero, zero, zero, beta=0.1, confidence=torch.tensor([0.7]))
    loss_h.backward()
    assert h.grad.item() == pytest.approx(0.1 * (torch.sigmoid(torch.tensor(0.3)).item() - 0.7), rel=1e-5)
    assert F.softplus(torch.tensor(0.0)).item() == pytest.approx(math.log(2))


# ---------------------------------------------------------------------------------------------
# the data layer carries the column to the trainers


def test_label_confidence_flows_to_the_pair_batch():
    from rlhfkit.data.collate import PairCollator
    from rlhfkit.data.formats import normalize
    from rlhfkit.errors import DataError

    rows = [{"prompt": "p", "chosen": "a", "rejected": "b", "label_confidence": 0.75},
            {"prompt": "p", "chosen": "c", "rejected": "d", "label_confidence": None}]
    out, _ = normalize(rows, "preference", source="mem")
    assert out[0]["label_confidence"] == 0.75 and "label_confidence" not in out[1]
    with pytest.raises(DataError, match="label_confidence"):
        normalize([{"prompt": "p", "chosen": "a", "rejected": "b", "label_confidence": 1.5}], "preference",
                  source="mem")
    batch = PairCollator(0)([{"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [3], "confidence": 0.75},
                             {"prompt_ids": [1], "chosen_ids": [4], "rejected_ids": [5]}])
    torch.testing.assert_close(batch["confidence"], torch.tensor([0.75, 1.0]))


def test_reward_pair_loss_uses_the_confidence_only_when_the_data_has_it():
    from rlhfkit.config import RewardConfig
    from rlhfkit.train.reward import _pair_loss

    cfg = RewardConfig(model="m", data="t.jsonl")
    rewards = torch.tensor([0.4, 1.0, -0.3, 0.2])  # chosen (2), then rejected (2)
    b = {"margin": torch.zeros(2), "tie": torch.zeros(2, dtype=torch.bool),
         "confidence": torch.tensor([0.9, 0.6])}
    soft, n = _pair_loss(cfg, rewards, b, soft=True)
    assert n == 2 and soft.item() == pytest.approx(((0.9 * sp(-0.7) + 0.1 * sp(0.7))
                                                    + (0.6 * sp(-0.8) + 0.4 * sp(0.8))) / 2, rel=1e-6)
    hard, _ = _pair_loss(cfg, rewards, b)
    assert hard.item() == pytest.approx((sp(-0.7) + sp(-0.8)) / 2, rel=1e-6)


@pytest.mark.usefixtures("one_thread")
def test_stages_train_on_the_soft_label_column(tmp_path):
    """The real reward and DPO stages on a tiny random Llama read label_confidence: a DPO step on
    pairs that are all c = 0.5 has exactly zero gradient at the reference (and loss ln 2), and the
    reward stage records that it trained on soft labels."""
    from rlhfkit.config import DPOConfig, RewardConfig
    from rlhfkit.testing.conformance import CONTEXT, build_model, build_tokenizer
    from rlhfkit.train.common import read_metrics
    from rlhfkit.train.dpo import train as dpo_train
    from rlhfkit.train.reward import train as reward_train

    tok = str(build_tokenizer("llama3", tmp_path / "tok"))
    model = str(build_model("llama", tmp_path / "model"))
    rows = [{"prompt": f"question {i}?", "chosen": f"a good answer {i}.", "rejected": "no.",
             "label_confidence": 0.5} for i in range(6)]
    data = tmp_path / "soft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = {"log_every": 1, "save_every": 0, "eval_fraction": 0.0, "seed": 0, "max_length": CONTEXT}
    dpo_train(DPOConfig(model=model, tokenizer=tok, data=str(data), output_dir=str(tmp_path / "dpo"),
                        per_device_batch_size=6, max_steps=1, learning_rate=1e-4, eval_sample_prompts=0,
                        **common))
    first = read_metrics(tmp_path / "dpo")[0]
    # (hard labels: the usual step-0 DPO gradient, far from 0)
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5) and first["grad_norm"] < 1e-6
    assert json.loads((tmp_path / "dpo" / "summary.json").read_text())["data"]["soft_labels"] == "used"
    reward_train(RewardConfig(model=model, tokenizer=tok, data=str(data), output_dir=str(tmp_path / "rm"),
                              per_device_batch_size=6, max_steps=1, learning_rate=1e-3, normalize="none",
                              **common))
    assert json.loads((tmp_path / "rm" / "summary.json").read_text())["data"]["soft_labels"] is True
