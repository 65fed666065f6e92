"""DPO-family losses against values computed by hand (sigmoid, cDPO, hinge, IPO, SimPO, RPO term)."""

import math

import pytest
import torch

from rlhfkit.losses import dpo_loss


def approx(x):
    return pytest.approx(x, rel=1e-6, abs=1e-6)


def softplus(x):
    """log(1 + e^x) = -log sigmoid(-x), written out."""
    return math.log(1.0 + math.exp(x))


# Two pairs; summed log-probs of policy and reference, and response token counts.
PC, PR = torch.tensor([-10.0, -20.0]), torch.tensor([-12.0, -15.0])
RC, RR = torch.tensor([-11.0, -18.0]), torch.tensor([-11.0, -16.0])
NC, NR = torch.tensor([4, 5]), torch.tensor([2, 10])
BETA = 0.5
# Summed log-ratios: pair 1 chosen +1, rejected -1 -> h = 2; pair 2 chosen -2, rejected +1 -> h = -3.
H = [(-10 + 11) - (-12 + 11), (-20 + 18) - (-15 + 16)]


def run(loss_type, **kw):
    return dpo_loss(PC, PR, RC, RR, loss_type=loss_type, beta=BETA, chosen_tokens=NC, rejected_tokens=NR,
                    **kw)


def test_sigmoid_by_hand():
    assert H == [2, -3]
    loss, m = run("sigmoid")
    # -log sigmoid(beta h) = log(1 + e^(-beta h)): pair 1 beta h = 1, pair 2 beta h = -1.5
    assert loss.item() == approx((softplus(-1.0) + softplus(1.5)) / 2)
    # implicit rewards beta * (logp - ref): chosen [0.5, -1], rejected [-0.5, 0.5]
    assert m["rewards/chosen"] == approx(-0.25)
    assert m["rewards/rejected"] == approx(0.0)
    assert m["margins"] == approx(((0.5 + 0.5) + (-1 - 0.5)) / 2)
    assert m["accuracy"] == approx(0.5)
    assert m["logps/chosen"] == approx(-15.0)
    assert m["logps/rejected"] == approx(-13.5)
    assert "nll" not in m


def test_cdpo_by_hand():
    eps = 0.1
    loss, m = run("cdpo", label_smoothing=eps)
    # -(1-eps) log sigmoid(beta h) - eps log sigmoid(-beta h)
    per = [(1 - eps) * softplus(-1.0) + eps * softplus(1.0), (1 - eps) * softplus(1.5) + eps * softplus(-1.5)]
    assert loss.item() == approx(sum(per) / 2)
    assert m["margins"] == approx(-0.25)  # rewards do not depend on the variant


def test_hinge_by_hand():
    loss, _ = run("hinge")
    # relu(1 - beta h): pair 1 relu(1 - 1) = 0, pair 2 relu(1 + 1.5) = 2.5
    assert loss.item() == approx((0.0 + 2.5) / 2)


def test_ipo_is_length_normalised_by_hand():
    loss, m = run("ipo")
    # h = (logp_c - ref_c)/n_c - (logp_r - ref_r)/n_r: pair 1 1/4 + 1/2 = 0.75, pair 2 -2/5 - 1/10 = -0.5;
    # target 1/(2 beta) = 1
    assert loss.item() == approx(((0.75 - 1) ** 2 + (-0.5 - 1) ** 2) / 2)
    assert m["rewards/chosen"] == approx(-0.25)  # reported rewards stay summed, as for DPO


def test_simpo_is_reference_free_and_length_normalised_by_hand():
    gamma = 0.3
    loss, m = dpo_loss(PC, PR, None, None, loss_type="simpo", beta=BETA, gamma=gamma,
                       chosen_tokens=NC, rejected_tokens=NR)
    # h = logp_c/n_c - logp_r/n_r: pair 1 -2.5 + 6 = 3.5, pair 2 -4 + 1.5 = -2.5
    # -log sigmoid(beta h - gamma): beta h - gamma = 1.45 and -1.55
    assert loss.item() == approx((softplus(-1.45) + softplus(1.55)) / 2)
    # SimPO rewards beta * logp / n: chosen [-1.25, -2], rejected [-3, -0.75]
    assert m["rewards/chosen"] == approx(-1.625)
    assert m["rewards/rejected"] == approx(-1.875)
    assert m["accuracy"] == approx(0.5)
    # the reference is ignored even when given
    with_ref, _ = run("simpo", gamma=gamma)
    assert with_ref.item() == approx(loss.item())


def test_rpo_nll_term_and_global_normaliser_by_hand():
    loss, m = run("sigmoid", rpo_alpha=2.0, num_pairs=8)
    dpo_sum = softplus(-1.0) + softplus(1.5)
    nll = [10 / 4, 20 / 5]  # -logp_c / n_c: chosen NLL per token
    assert m["nll"] == approx(sum(nll) / 2)
    # summed over the 2 pairs, divided by the step's pair count (8), not by 2
    assert loss.item() == approx((dpo_sum + 2.0 * sum(nll)) / 8)


def test_step0_loss_is_ln2_and_margins_zero_when_policy_is_reference():
    g = torch.Generator().manual_seed(0)
    pc, pr = -50 * torch.rand(16, generator=g), -50 * torch.rand(16, generator=g)
    loss, m = dpo_loss(pc, pr, pc.clone(), pr.clone(), beta=0.1)
    assert loss.item() == approx(math.log(2))
    assert m["margins"] == 0.0 and m["rewards/chosen"] == 0.0 and m["accuracy"] == 0.0
    loss, _ = dpo_loss(pc, pr, pc.clone(), pr.clone(), loss_type="cdpo", beta=0.1, label_smoothing=0.2)
    assert loss.item() == approx(math.log(2))  # any eps: both terms are ln 2 at h = 0


def test_gradient_pushes_chosen_up_and_rejected_down():
    pc, pr = torch.tensor([-5.0], requires_grad=True), torch.tensor([-5.0], requires_grad=True)
    for lt, kw in (("sigmoid", {}), ("cdpo", {"label_smoothing": 0.1}), ("hinge", {}), ("ipo", {})):
        pc.grad = pr.grad = None
        loss, _ = dpo_loss(pc, pr, torch.tensor([-5.0]), torch.tensor([-5.0]), loss_type=lt, beta=0.1,
                           chosen_tokens=torch.tensor([3]), rejected_tokens=torch.tensor([3]), **kw)
        loss.backward()
        assert pc.grad.item() < 0 < pr.grad.item(), lt


def test_extreme_log_ratios_stay_finite():
    loss, _ = dpo_loss(torch.tensor([-1e4]), torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]),
                       beta=1.0)
    assert loss.item() == approx(1e4)  # softplus, not -log(sigmoid) = inf


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown DPO loss_type"):
        run("kto")
    with pytest.raises(ValueError, match="label_smoothing"):
        run("sigmoid", label_smoothing=0.1)
    with pytest.raises(ValueError, match="gamma"):
        run("sigmoid", gamma=0.5)
    with pytest.raises(ValueError, match="reference"):
        dpo_loss(PC, PR, None, None, loss_type="sigmoid")
    with pytest.raises(ValueError, match="chosen_tokens"):
        dpo_loss(PC, PR, RC, RR, loss_type="ipo")
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(PC, PR, RC, RR, beta=0.0)
