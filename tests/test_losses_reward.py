"""Reward-model losses against values computed by hand (BT, margins, weights, K-way rankings, ties)."""

import math

import pytest
import torch

from rlhfkit.losses import (
    bradley_terry_loss,
    bt_with_ties_loss,
    ranking_batch,
    ranking_loss,
    ranking_loss_with_ties,
    ranking_pair_indices,
    reward_centering_loss,
    tie_loss,
    tie_model_log_probs,
)


def approx(x):
    return pytest.approx(x, rel=1e-6, abs=1e-6)


def nls(x):
    """-log sigmoid(x), written out."""
    return -math.log(1.0 / (1.0 + math.exp(-x)))


# ----------------------------------------------------------------------------- Bradley-Terry

def test_bradley_terry_by_hand():
    r_c = torch.tensor([2.0, 0.5])
    r_r = torch.tensor([1.0, 1.0])
    loss, m = bradley_terry_loss(r_c, r_r)
    # pair 1: d = 1 -> log(1 + e^-1); pair 2: d = -0.5 -> log(1 + e^0.5)
    expected = (math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(0.5))) / 2
    assert loss.item() == approx(expected)
    assert m["accuracy"] == approx(0.5)
    assert m["chosen_reward"] == approx(1.25)
    assert m["rejected_reward"] == approx(1.0)
    assert m["margin"] == approx(0.25)
    # all-zero rewards: ln 2
    assert bradley_terry_loss(torch.zeros(3), torch.zeros(3))[0].item() == approx(math.log(2))


def test_bradley_terry_margin_by_hand_and_larger():
    r_c = torch.tensor([2.0, 0.5])
    r_r = torch.tensor([1.0, 1.0])
    margin = torch.tensor([0.5, 0.0])
    loss, _ = bradley_terry_loss(r_c, r_r, margin=margin)
    expected = (math.log(1 + math.exp(-(1.0 - 0.5))) + math.log(1 + math.exp(0.5))) / 2
    assert loss.item() == approx(expected)
    # a positive margin raises every pair's loss
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, generator=g), torch.randn(16, generator=g)
    base = bradley_terry_loss(a, b)[0].item()
    assert bradley_terry_loss(a, b, margin=torch.full((16,), 0.3))[0].item() > base
    assert bradley_terry_loss(a, b, margin=0.3)[0].item() > base  # scalar margin broadcasts
    assert bradley_terry_loss(a, b, margin=torch.zeros(16))[0].item() == approx(base)


def test_bradley_terry_weights_by_hand():
    r_c = torch.tensor([2.0, 0.5])
    r_r = torch.tensor([1.0, 1.0])
    w = torch.tensor([3.0, 1.0])
    loss, _ = bradley_terry_loss(r_c, r_r, weights=w)
    l1 = math.log(1 + math.exp(-1.0))
    l2 = math.log(1 + math.exp(0.5))
    assert loss.item() == approx((3 * l1 + 1 * l2) / 4)
    # weights are normalised by their sum: scaling them changes nothing
    assert bradley_terry_loss(r_c, r_r, weights=10 * w)[0].item() == approx(loss.item())
    # equal weights give the plain mean
    assert bradley_terry_loss(r_c, r_r, weights=torch.ones(2))[0].item() == approx(
        bradley_terry_loss(r_c, r_r)[0].item())


def test_bradley_terry_gradient_signs_and_values():
    r_c = torch.tensor([2.0, 0.5, -3.0], requires_grad=True)
    r_r = torch.tensor([1.0, 1.0, 4.0], requires_grad=True)
    loss, _ = bradley_terry_loss(r_c, r_r)
    loss.backward()
    assert (r_c.grad < 0).all()  # raising the chosen reward lowers the loss
    assert (r_r.grad > 0).all()
    # d/dr_c of mean softplus(-(r_c - r_r)) = -sigmoid(-(r_c - r_r)) / B
    for k, d in enumerate([1.0, -0.5, -7.0]):
        assert r_c.grad[k].item() == approx(-1.0 / (1.0 + math.exp(d)) / 3)
        assert r_r.grad[k].item() == approx(1.0 / (1.0 + math.exp(d)) / 3)
    # and a step along -grad lowers the loss
    with torch.no_grad():
        l2 = bradley_terry_loss(r_c - 0.1 * r_c.grad, r_r - 0.1 * r_r.grad)[0]
    assert l2.item() < loss.item()


def test_bradley_terry_stable_for_extreme_rewards():
    r_c = torch.tensor([1e4, -1e4], requires_grad=True)
    r_r = torch.tensor([-1e4, 1e4])
    loss, _ = bradley_terry_loss(r_c, r_r)
    loss.backward()
    assert math.isfinite(loss.item()) and loss.item() == approx(2e4 / 2)  # softplus(2e4) = 2e4
    assert torch.isfinite(r_c.grad).all()


# ----------------------------------------------------------------------------- K-way rankings

def test_ranking_pair_indices_k3_with_tie():
    # response 0 best, 1 and 2 tied below it: the tied pair (1, 2) is dropped
    assert ranking_pair_indices([0, 1, 1]) == ([0, 0], [1, 2])
    assert ranking_pair_indices([1, 2, 3]) == ([0, 0, 1], [1, 2, 2])
    assert ranking_pair_indices([3, 2, 1]) == ([1, 2, 2], [0, 0, 1])
    assert ranking_pair_indices([0, 0]) == ([], [])
    assert ranking_pair_indices([0]) == ([], [])


def test_ranking_pair_indices_k4_with_tie():
    # ranks (lower = better): 1 and 3 tied best, then 2, then 0
    # (0,1)->1>0 (0,2)->2>0 (0,3)->3>0 (1,2)->1>2 (1,3) tie (2,3)->3>2
    assert ranking_pair_indices([2, 0, 1, 0]) == ([1, 2, 3, 1, 3], [0, 0, 0, 2, 2])


def test_ranking_batch_indices_and_weights():
    b = ranking_batch([[0, 1, 1], [2, 0, 1, 0], [0, 0]])
    # prompt 0 at rows 0..2, prompt 1 at rows 3..6, prompt 2 (all tied) at rows 7..8
    assert b["better"].tolist() == [0, 0, 4, 5, 6, 4, 6]
    assert b["worse"].tolist() == [1, 2, 3, 3, 3, 5, 5]
    # 1/C(3,2) = 1/3 for K=3, 1/C(4,2) = 1/6 for K=4, also for prompts with ties
    assert b["pair_weight"].tolist() == approx([1 / 3, 1 / 3] + [1 / 6] * 5)
    assert b["group"].tolist() == [0, 0, 1, 1, 1, 1, 1]
    assert b["group_ids"].tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2]
    assert int(b["num_prompts"]) == 3
    u = ranking_batch([[0, 1, 1], [2, 0, 1, 0], [0, 0]], weighting="untied")
    assert u["pair_weight"].tolist() == approx([1 / 2, 1 / 2] + [1 / 5] * 5)
    # a fully ordered prompt has total weight 1 under both
    full = ranking_batch([[0, 1, 2, 3]])
    assert full["pair_weight"].sum().item() == approx(1.0)
    with pytest.raises(ValueError):
        ranking_batch([[0, 1]], weighting="bogus")


def test_ranking_loss_by_hand():
    b = ranking_batch([[0, 1, 1], [2, 0, 1, 0], [0, 0]])
    rewards = torch.tensor([1.0, 0.0, -1.0,  # prompt 0
                            0.0, 2.0, 1.0, 0.5,  # prompt 1
                            0.3, -0.3])  # prompt 2, all tied: no pair, still counts
    loss, m = ranking_loss(rewards, b["better"], b["worse"], b["pair_weight"], b["num_prompts"])
    # prompt 0 pairs: (0,1) d=1, (0,2) d=2
    p0 = (1 / 3) * (nls(1.0) + nls(2.0))
    # prompt 1 pairs: (4,3) d=2, (5,3) d=1, (6,3) d=0.5, (4,5) d=1, (6,5) d=-0.5
    p1 = (1 / 6) * (nls(2.0) + nls(1.0) + nls(0.5) + nls(1.0) + nls(-0.5))
    assert loss.item() == approx((p0 + p1) / 3)
    assert m["accuracy"] == approx(6 / 7)
    assert m["pairs"] == 7
    # untied weighting: each prompt's mean pair loss
    u = ranking_batch([[0, 1, 1], [2, 0, 1, 0], [0, 0]], weighting="untied")
    loss_u, _ = ranking_loss(rewards, u["better"], u["worse"], u["pair_weight"], 3)
    q0 = (nls(1.0) + nls(2.0)) / 2
    q1 = (nls(2.0) + nls(1.0) + nls(0.5) + nls(1.0) + nls(-0.5)) / 5
    assert loss_u.item() == approx((q0 + q1) / 3)


def test_ranking_loss_k2_is_bradley_terry_and_gradients():
    # K = 2 per prompt with weight 1/C(2,2) = 1 is exactly the pairwise BT loss
    b = ranking_batch([[0, 1], [1, 0]])
    rewards = torch.tensor([0.7, -0.2, 0.1, 0.4], requires_grad=True)
    loss, _ = ranking_loss(rewards, b["better"], b["worse"], b["pair_weight"], b["num_prompts"])
    bt, _ = bradley_terry_loss(torch.tensor([0.7, 0.4]), torch.tensor([-0.2, 0.1]))
    assert loss.item() == approx(bt.item())
    loss.backward()
    assert rewards.grad[0] < 0 and rewards.grad[1] > 0  # prompt 0: response 0 better
    assert rewards.grad[3] < 0 and rewards.grad[2] > 0  # prompt 1: response 1 (row 3) better


def test_ranking_batch_lists_tied_pairs():
    # Regression: the ranking path must know its tied pairs to fit them (ties=rao_kupper|davidson).
    b = ranking_batch([[0, 1, 1], [2, 0, 1, 0], [0, 0]])
    # prompt 0 (rows 0..2): 1~2; prompt 1 (rows 3..6, ranks 2 0 1 0): 4~6; prompt 2 (rows 7, 8): 7~8
    assert b["tie_a"].tolist() == [1, 4, 7]
    assert b["tie_b"].tolist() == [2, 6, 8]
    assert b["tie_group"].tolist() == [0, 1, 2]
    # each a comparison of its prompt like any other: 1/C(K, 2), so with ties fitted every prompt
    # (a tied pair too: 1/C(2, 2) = 1) weighs exactly 1
    assert b["tie_weight"].tolist() == approx([1 / 3, 1 / 6, 1.0])
    assert (b["pair_weight"][b["group"] == 1].sum() + b["tie_weight"][1]).item() == approx(1.0)
    assert b["better"].tolist() == [0, 0, 4, 5, 6, 4, 6]  # the untied pairs are unchanged
    u = ranking_batch([[0, 1, 1], [2, 0, 1, 0], [0, 0]], weighting="untied")
    assert u["tie_weight"].tolist() == approx([1 / 3, 1 / 6, 1.0])
    none = ranking_batch([[1, 2, 3]])
    assert none["tie_a"].tolist() == [] and none["tie_a"].dtype == torch.long


def test_ranking_loss_with_ties_by_hand_rao_kupper():
    theta = 2.0
    # A tied pair read as a ranking ([1, 1]) with pi = 2 and 1: P(tie) = 3*2/((2+2)(1+4)) = 0.3,
    # exactly the pair path's tie loss for the same scores.
    one = ranking_batch([[1, 1]])
    r = torch.tensor([math.log(2.0), 0.0])
    loss, m = ranking_loss_with_ties(r, one["better"], one["worse"], one["pair_weight"], one["tie_a"],
                                     one["tie_b"], one["tie_weight"], one["num_prompts"], theta, "rao_kupper")
    assert loss.item() == approx(-math.log(0.3))
    pair_tie, _ = tie_loss(r[:1], r[1:], theta, "rao_kupper")
    assert loss.item() == approx(pair_tie.item())
    assert m["ties"] == 1 and m["pairs"] == 0 and math.isnan(m["accuracy"]) and m["p_tie"] == approx(0.3)
    # a tied pair and a won pair, as 2-way rankings, equal bt_with_ties_loss on the two pairs:
    # win: P(2 beats 1) = 2/(2 + 2*1) = 0.5; tie: 0.3
    b = ranking_batch([[1, 1], [1, 2]])
    r = torch.tensor([math.log(2.0), 0.0, math.log(2.0), 0.0], requires_grad=True)
    loss, m = ranking_loss_with_ties(r, b["better"], b["worse"], b["pair_weight"], b["tie_a"], b["tie_b"],
                                     b["tie_weight"], b["num_prompts"], theta, "rao_kupper")
    assert loss.item() == approx((-math.log(0.3) - math.log(0.5)) / 2)
    pairs, _ = bt_with_ties_loss(torch.tensor([math.log(2.0)] * 2), torch.zeros(2),
                                 torch.tensor([True, False]), theta, "rao_kupper")
    assert loss.item() == approx(pairs.item())
    assert m["accuracy"] == approx(1.0) and m["ties"] == 1 and m["pairs"] == 1
    loss.backward()
    assert r.grad[0] > 0 and r.grad[1] < 0  # the tie pulls its two rewards together ...
    assert r.grad[2] < 0 and r.grad[3] > 0  # ... the win pushes them apart
    # K = 3, ranks [1, 1, 2], pi = (2, 1, 1): wins 0>2: 2/(2+2) = 0.5, 1>2: 1/(1+2) = 1/3; tie 0~1: 0.3;
    # every pair of the prompt weighs 1/C(3, 2)
    b = ranking_batch([[1, 1, 2]])
    r = torch.tensor([math.log(2.0), 0.0, 0.0])
    loss, _ = ranking_loss_with_ties(r, b["better"], b["worse"], b["pair_weight"], b["tie_a"], b["tie_b"],
                                     b["tie_weight"], b["num_prompts"], theta, "rao_kupper")
    assert loss.item() == approx((-math.log(0.5) - math.log(1 / 3) - math.log(0.3)) / 3)


def test_ranking_loss_with_ties_by_hand_davidson():
    nu = 1.0
    # pi = 4 vs 1: P(win) = 4/7, P(tie) = 2*1/7; pi = 1 vs 1: P(win) = 1/3
    b = ranking_batch([[1, 1], [1, 2], [1, 1, 2]])
    r = torch.tensor([math.log(4.0), 0.0, math.log(4.0), 0.0, math.log(4.0), 0.0, 0.0])
    loss, _ = ranking_loss_with_ties(r, b["better"], b["worse"], b["pair_weight"], b["tie_a"], b["tie_b"],
                                     b["tie_weight"], b["num_prompts"], nu, "davidson")
    p0 = -math.log(2 / 7)
    p1 = -math.log(4 / 7)
    p2 = (-math.log(4 / 7) - math.log(1 / 3) - math.log(2 / 7)) / 3
    assert loss.item() == approx((p0 + p1 + p2) / 3)


# ----------------------------------------------------------------------------- ties

def test_rao_kupper_probabilities_by_hand():
    pi_i, pi_j, theta = 2.0, 1.0, 2.0
    lw, ll, lt = tie_model_log_probs(torch.tensor([math.log(pi_i)]), torch.tensor([math.log(pi_j)]),
                                     theta, "rao_kupper")
    p_win = pi_i / (pi_i + theta * pi_j)  # 0.5
    p_loss = pi_j / (pi_j + theta * pi_i)  # 0.2
    p_tie = (theta ** 2 - 1) * pi_i * pi_j / ((pi_i + theta * pi_j) * (pi_j + theta * pi_i))  # 0.3
    assert lw.exp().item() == approx(p_win)
    assert ll.exp().item() == approx(p_loss)
    assert lt.exp().item() == approx(p_tie)
    assert p_win + p_loss + p_tie == approx(1.0)
    loss, m = tie_loss(torch.tensor([math.log(pi_i)]), torch.tensor([math.log(pi_j)]), theta, "rao_kupper")
    assert loss.item() == approx(-math.log(0.3))
    assert m["p_tie"] == approx(0.3)


def test_davidson_probabilities_by_hand():
    pi_i, pi_j, nu = 4.0, 1.0, 1.0
    lw, ll, lt = tie_model_log_probs(torch.tensor([math.log(pi_i)]), torch.tensor([math.log(pi_j)]),
                                     nu, "davidson")
    s = math.sqrt(pi_i * pi_j)  # 2
    z = pi_i + pi_j + nu * s  # 7
    assert lw.exp().item() == approx(pi_i / z)
    assert ll.exp().item() == approx(pi_j / z)
    assert lt.exp().item() == approx(nu * s / z)
    loss, _ = tie_loss(torch.tensor([math.log(pi_i)]), torch.tensor([math.log(pi_j)]), nu, "davidson")
    assert loss.item() == approx(-math.log(2 / 7))


@pytest.mark.parametrize("model,param", [("rao_kupper", 1.5), ("rao_kupper", 5.0),
                                         ("davidson", 0.7), ("davidson", 3.0)])
def test_tie_models_sum_to_one(model, param):
    g = torch.Generator().manual_seed(1)
    ri, rj = 3 * torch.randn(64, generator=g), 3 * torch.randn(64, generator=g)
    lw, ll, lt = tie_model_log_probs(ri, rj, param, model)
    total = lw.exp() + ll.exp() + lt.exp()
    assert torch.allclose(total, torch.ones(64), atol=1e-5)
    # symmetric: swapping i and j swaps the win probabilities and keeps the tie one
    lw2, ll2, lt2 = tie_model_log_probs(rj, ri, param, model)
    assert torch.allclose(lw, ll2, atol=1e-6) and torch.allclose(lt, lt2, atol=1e-6)


def test_tie_models_recover_plain_bt():
    g = torch.Generator().manual_seed(2)
    ri, rj = torch.randn(32, generator=g), torch.randn(32, generator=g)
    plain = torch.nn.functional.logsigmoid(ri - rj)
    lw, _, lt = tie_model_log_probs(ri, rj, 1 + 1e-6, "rao_kupper")
    assert torch.allclose(lw, plain, atol=1e-5)
    assert (lt.exp() < 1e-5).all()
    lw, _, lt = tie_model_log_probs(ri, rj, 1e-7, "davidson")
    assert torch.allclose(lw, plain, atol=1e-5)
    lw, _, lt = tie_model_log_probs(ri, rj, 0.0, "davidson")  # nu = 0 exactly: plain BT, P(tie) = 0
    assert torch.allclose(lw, plain, atol=1e-6) and (lt.exp() == 0).all()
    no_tie = torch.zeros(32, dtype=torch.bool)
    bt, _ = bradley_terry_loss(ri, rj)
    assert bt_with_ties_loss(ri, rj, no_tie, 1 + 1e-6, "rao_kupper")[0].item() == pytest.approx(
        bt.item(), abs=1e-5)
    assert bt_with_ties_loss(ri, rj, no_tie, 0.0, "davidson")[0].item() == pytest.approx(bt.item(), abs=1e-6)


def test_tie_param_validation():
    r = torch.zeros(2)
    with pytest.raises(ValueError):
        tie_loss(r, r, 1.0, "rao_kupper")
    with pytest.raises(ValueError):
        tie_loss(r, r, -0.1, "davidson")
    with pytest.raises(ValueError):
        tie_loss(r, r, 2.0, "bradley")


def test_bt_with_ties_by_hand():
    theta = 2.0
    # row 0: a win, P(c > r) = 2/(2 + 2*1) = 0.5; row 1: a tie of the same two rewards, P = 0.3
    r_c = torch.tensor([math.log(2.0), 0.0], requires_grad=True)
    r_r = torch.tensor([0.0, math.log(2.0)], requires_grad=True)
    is_tie = torch.tensor([False, True])
    loss, m = bt_with_ties_loss(r_c, r_r, is_tie, theta, "rao_kupper")
    assert loss.item() == approx((-math.log(0.5) - math.log(0.3)) / 2)
    assert m["tie_fraction"] == approx(0.5)
    assert m["accuracy"] == approx(1.0)
    assert m["p_tie"] == approx(0.3)
    # the tie row is not a win for "chosen": its loss ignores the order of the pair
    swapped, _ = bt_with_ties_loss(torch.tensor([math.log(2.0), math.log(2.0)]),
                                   torch.tensor([0.0, 0.0]), is_tie, theta, "rao_kupper")
    assert swapped.item() == approx(loss.item())
    # and treating it as a win would give a different value: -log P(0 beats log 2) = -log(1/(1+4))
    as_win, _ = bt_with_ties_loss(r_c, r_r, torch.tensor([False, False]), theta, "rao_kupper")
    assert as_win.item() == approx((-math.log(0.5) - math.log(1 / 5)) / 2)
    # gradient of the tie row pulls the two rewards together
    loss.backward()
    # (r_c[1] < r_r[1]: descent raises r_c[1] and lowers r_r[1])
    assert r_c.grad[1] < 0 and r_r.grad[1] > 0
    # weights: only the tie row counts
    wl, _ = bt_with_ties_loss(r_c, r_r, is_tie, theta, "rao_kupper", weights=torch.tensor([0.0, 1.0]))
    assert wl.item() == approx(-math.log(0.3))


def test_bt_with_ties_davidson_by_hand():
    nu = 1.0
    # pi = 4 vs 1: P(win) = 4/7, P(tie) = 2/7
    r_c = torch.tensor([math.log(4.0), math.log(4.0)])
    r_r = torch.tensor([0.0, 0.0])
    loss, _ = bt_with_ties_loss(r_c, r_r, torch.tensor([False, True]), nu, "davidson")
    assert loss.item() == approx((-math.log(4 / 7) - math.log(2 / 7)) / 2)


def test_tie_loss_minimised_at_equal_rewards_and_stable():
    for model, p in [("rao_kupper", 3.0), ("davidson", 0.5)]:
        base = tie_loss(torch.tensor([0.4]), torch.tensor([0.4]), p, model)[0].item()
        assert tie_loss(torch.tensor([0.9]), torch.tensor([0.4]), p, model)[0].item() > base
        r = torch.tensor([1e4, -1e4], requires_grad=True)
        loss, _ = tie_loss(r, torch.tensor([-1e4, 1e4]), p, model)
        loss.backward()
        assert math.isfinite(loss.item()) and torch.isfinite(r.grad).all()


# ----------------------------------------------------------------------------- centering

def test_reward_centering_by_hand():
    r_c = torch.tensor([1.0, 2.0], requires_grad=True)
    r_r = torch.tensor([1.0, -1.0])
    loss = reward_centering_loss(r_c, r_r, coef=0.1)
    # sums 2 and 1: 0.1 * (4 + 1) / 2
    assert loss.item() == approx(0.25)
    loss.backward()
    # d/dr_c = coef * 2 * s / B
    assert r_c.grad.tolist() == approx([0.1 * 2 * 2 / 2, 0.1 * 2 * 1 / 2])
    assert reward_centering_loss(torch.tensor([1.0]), torch.tensor([-1.0]), 1.0).item() == 0.0
