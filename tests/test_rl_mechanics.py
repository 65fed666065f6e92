"""RL mechanics (issue 6): KL estimators and controllers, GAE / whitening / RLOO / GRPO, PPO
losses by hand, and rollout invariances on the world's tiny base model."""

import math

import pytest
import torch

from rlhfkit.losses import entropy_from_logits, ppo_policy_loss, ppo_value_loss
from rlhfkit.rl.advantages import (
    gae,
    grpo_advantages,
    last_token_index,
    per_token_rewards,
    rloo_advantages,
    whiten,
)
from rlhfkit.rl.kl import AdaptiveKLController, FixedKLController, kl_estimate, kl_k1, kl_k2, kl_k3


def approx(x, tol=1e-6):
    return pytest.approx(x, rel=tol, abs=tol)


def same(t: torch.Tensor, expected) -> bool:
    """Elementwise closeness of a tensor to nested lists of hand values."""
    return torch.allclose(t.float(), torch.tensor(expected, dtype=torch.float32), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- KL


def test_kl_estimators_by_hand():
    logp = torch.tensor([-1.0, -2.0])
    ref = torch.tensor([-1.5, -1.0])  # log r = ref - logp = [-0.5, 1.0]
    assert kl_k1(logp, ref).tolist() == approx([0.5, -1.0])  # -log r
    assert kl_k2(logp, ref).tolist() == approx([0.125, 0.5])  # 0.5 (log r)^2
    # (r - 1) - log r: e^-0.5 - 1 + 0.5 = 0.1065307; e - 1 - 1 = 0.7182818
    assert kl_k3(logp, ref).tolist() == approx([math.exp(-0.5) - 0.5, math.e - 2.0])
    assert kl_estimate(logp, ref, "k3").tolist() == kl_k3(logp, ref).tolist()
    with pytest.raises(ValueError):
        kl_estimate(logp, ref, "k4")
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1000, generator=g) * 3, torch.randn(1000, generator=g) * 3
    assert bool((kl_k3(a, b) >= 0).all()) and bool((kl_k2(a, b) >= 0).all())
    assert kl_k3(a, a).abs().max().item() == 0.0


def test_kl_controllers_by_hand_and_state():
    fixed = FixedKLController(0.05)
    assert fixed.update(100.0, 64) == 0.05
    c = AdaptiveKLController(init_beta=0.1, target=6.0, horizon=10000)
    # KL 9: e = clip(9/6 - 1 = 0.5) = 0.2 -> beta = 0.1 * (1 + 0.2 * 256 / 10000) = 0.100512
    assert c.update(9.0, 256) == approx(0.100512)
    # KL 6.6: e = 0.1 (inside the clip) -> beta *= 1 + 0.1 * 100 / 10000 = 1.001
    assert c.update(6.6, 100) == approx(0.100512 * 1.001)
    # KL 3: e = -0.5 -> -0.2 -> beta *= 1 - 0.2 * 256 / 10000
    expected = 0.100512 * 1.001 * (1 - 0.00512)
    assert c.update(3.0, 256) == approx(expected)
    state = c.state_dict()
    c2 = AdaptiveKLController(init_beta=1.0, target=1.0, horizon=1.0)
    c2.load_state_dict(state)
    assert c2.update(7.5, 10) == c.update(7.5, 10)  # resumed controller continues identically


# ----------------------------------------------------------------------------- advantages


def test_gae_masked_by_hand():
    # Row 0: response at t=0..2, t=3 is padding holding garbage that must not leak in.
    # Row 1: t=0 is the prompt (masked), response at t=1..3.
    rewards = torch.tensor([[0.1, -0.2, 1.0, 9.0], [5.0, 0.0, 0.0, 2.0]])
    values = torch.tensor([[0.5, 0.4, 0.3, 7.0], [3.0, 1.0, 1.5, 1.0]])
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # Row 0 (gamma 1, lambda 0.5), backwards from the last valid token:
    #   t=2: delta = 1.0 + 0 - 0.3 = 0.7                 A2 = 0.7
    #   t=1: delta = -0.2 + 0.3 - 0.4 = -0.3             A1 = -0.3 + 0.5 * 0.7 = 0.05
    #   t=0: delta = 0.1 + 0.4 - 0.5 = 0.0               A0 = 0.0 + 0.5 * 0.05 = 0.025
    # Row 1:
    #   t=3: delta = 2 - 1 = 1                           A3 = 1
    #   t=2: delta = 0 + 1 - 1.5 = -0.5                  A2 = -0.5 + 0.5 * 1 = 0
    #   t=1: delta = 0 + 1.5 - 1 = 0.5                   A1 = 0.5 + 0.5 * 0 = 0.5
    assert adv[0].tolist() == approx([0.025, 0.05, 0.7, 0.0])
    assert adv[1].tolist() == approx([0.0, 0.5, 0.0, 1.0])
    # returns = A + V (before any whitening), 0 off the mask
    assert ret[0].tolist() == approx([0.525, 0.45, 1.0, 0.0])
    assert ret[1].tolist() == approx([0.0, 1.5, 1.5, 2.0])
    # gamma 0.9, row 0: t=2: 0.7; t=1: delta = -0.2 + 0.27 - 0.4 = -0.33, A1 = -0.33 + 0.45*0.7
    # = -0.015; t=0: delta = 0.1 + 0.36 - 0.5 = -0.04, A0 = -0.04 + 0.45 * -0.015 = -0.04675
    adv9, _ = gae(rewards[:1], values[:1], mask[:1], gamma=0.9, lam=0.5)
    assert adv9[0].tolist() == approx([-0.04675, -0.015, 0.7, 0.0])
    # garbage after the last valid token changes nothing
    r2, v2 = rewards.clone(), values.clone()
    r2[0, 3], v2[0, 3] = -123.0, 456.0
    assert torch.equal(gae(r2, v2, mask, gamma=1.0, lam=0.5)[0], adv)


def test_whiten_uses_valid_tokens_only():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, -50.0, -50.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # valid values 1, 2, 3: mean 2, unbiased var (1 + 0 + 1) / 2 = 1
    w = whiten(x, mask, eps=0.0)
    assert same(w, [[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    x2 = x.clone()
    x2[0, 2], x2[1, 1:] = -7.0, 1e6  # padding values do not change the result
    assert torch.equal(whiten(x2, mask, eps=0.0), w)
    assert same(whiten(x, mask, shift_mean=False, eps=0.0), [[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]])


def test_per_token_rewards_by_hand():
    score = torch.tensor([1.0, 2.0])
    kl = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, -0.2, 0.8]])
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])
    r = per_token_rewards(score, kl, mask, beta=0.5)
    assert same(r, [[-0.05, -0.1, -0.15 + 1.0, 0.0], [0.0, -0.3, 0.1, -0.4 + 2.0]])
    assert last_token_index(torch.tensor([[0, 1, 1, 0], [0, 0, 0, 0]])).tolist() == [2, -1]
    # a row without response tokens gets nothing (and no crash)
    r0 = per_token_rewards(score, kl, torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]]), beta=0.5)
    assert same(r0, [[-0.05 + 1.0, 0, 0, 0], [0, 0, 0, 0]])


def test_rloo_and_grpo_by_hand():
    rewards = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])  # 2 prompts x k=3, contiguous
    # prompt 0: 1 - (2+6)/2 = -3; 2 - (1+6)/2 = -1.5; 6 - (1+2)/2 = 4.5
    # prompt 1: 0 - (0+3)/2 = -1.5 (twice); 3 - 0 = 3
    assert rloo_advantages(rewards, 3).tolist() == approx([-3.0, -1.5, 4.5, -1.5, -1.5, 3.0])
    # GRPO prompt 0: mean 3, deviations -2, -1, 3, unbiased std sqrt(14 / 2) = sqrt 7
    s7 = math.sqrt(7.0)
    # prompt 1: mean 1, deviations -1, -1, 2, std sqrt(6 / 2) = sqrt 3
    s3 = math.sqrt(3.0)
    g = grpo_advantages(rewards, 3, eps=0.0)
    assert g.tolist() == approx([-2 / s7, -1 / s7, 3 / s7, -1 / s3, -1 / s3, 2 / s3])
    assert grpo_advantages(rewards, 3, scale=False).tolist() == approx([-2.0, -1.0, 3.0, -1.0, -1.0, 2.0])
    # a group with equal rewards gets 0 (eps keeps the division finite)
    assert grpo_advantages(torch.tensor([0.5, 0.5]), 2).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError):
        rloo_advantages(rewards, 4)


def test_group_advantages_keep_beta_in_control():
    """GRPO with the KL in the reward: the task score is standardised within the group first, the
    KL penalty is applied after, so in a group whose task scores tie the advantage is -beta times
    the centred KL -- it scales with beta (bug: standardising score - beta * KL made it
    -standardised(KL) whatever beta)."""
    from rlhfkit.rl.advantages import group_advantages

    score = torch.tensor([0.5, 0.5, 0.5, 0.5, 1.0, 2.0, 6.0, 3.0])  # 2 prompts x k=4
    kl = torch.tensor([1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 0.0, 4.0])
    for beta in (0.01, 0.1, 1.0):
        a = group_advantages("grpo", score, kl, beta, 4)
        # group 0: kl mean 3 -> -beta * [-2, -1, 0, 3]; task part 0
        assert a[:4].tolist() == pytest.approx([2 * beta, beta, 0.0, -3 * beta], abs=1e-6)
        # group 1: task mean 3, deviations [-2, -1, 3, 0], std sqrt(14/3); kl mean 1
        s = math.sqrt(14 / 3)
        assert a[4:].tolist() == pytest.approx([-2 / s + beta, -1 / s + beta, 3 / s + beta, 0 - 3 * beta],
                                               abs=1e-3)
    # Dr. GRPO: no division by the group std
    a = group_advantages("grpo", score, kl, 0.1, 4, scale=False)
    assert a[4:].tolist() == pytest.approx([-2 + 0.1, -1 + 0.1, 3 + 0.1, -0.3], abs=1e-6)
    # RLOO is linear: its advantage of score - beta * kl is exact
    assert (group_advantages("rloo", score, kl, 0.1, 4).tolist()
            == approx(rloo_advantages(score - 0.1 * kl, 4).tolist()))
    assert group_advantages("grpo", score, kl, 0.0, 4).tolist() == approx(grpo_advantages(score, 4).tolist())


def test_ppo_loss_is_the_global_token_mean_across_processes():
    """Two processes with different token counts: the DDP-averaged gradient of each process's loss
    (normalised by global_token_normalizer) equals one process's gradient of the token mean of the
    whole minibatch (per-process means averaged would weight process 2's tokens 3x more)."""
    from types import SimpleNamespace

    from rlhfkit.distributed import global_token_normalizer

    torch.manual_seed(0)
    w = torch.randn(5, requires_grad=True)  # a "policy": logp_t = w . x_t
    x = torch.randn(2, 6, 5)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]])  # 6 and 2 tokens
    adv = torch.randn(2, 6)

    def loss(rows, num_tokens):
        lp = x[rows] @ w
        return ppo_policy_loss(lp, lp.detach() - 0.1, adv[rows], mask[rows], num_tokens=num_tokens)[0]

    (g_one,) = torch.autograd.grad(loss([0, 1], None), w)
    grads = []
    for r, other in ((0, 1), (1, 0)):  # each "process" holds one row; reduce adds the other's count
        acc = SimpleNamespace(num_processes=2, reduce=lambda t, reduction, o=other: t + mask[o].sum())
        grads.append(torch.autograd.grad(loss([r], global_token_normalizer(acc, mask[[r]])), w)[0])
    torch.testing.assert_close((grads[0] + grads[1]) / 2, g_one)  # DDP averages over processes
    naive = [torch.autograd.grad(loss([r], None), w)[0] for r in (0, 1)]
    assert not torch.allclose((naive[0] + naive[1]) / 2, g_one, atol=1e-3)


# ----------------------------------------------------------------------------- PPO losses


def test_ppo_policy_loss_ratio_one_is_minus_mean_advantage():
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -9.0, -9.0]], requires_grad=True)
    adv = torch.tensor([[1.0, -2.0, 0.5], [3.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    loss, m = ppo_policy_loss(logp, logp.detach(), adv, mask)
    assert loss.item() == approx(-(1.0 - 2.0 + 0.5 + 3.0) / 4)
    assert m["clipfrac"] == 0.0 and m["approx_kl"] == 0.0 and m["ratio"] == approx(1.0)


def test_ppo_policy_loss_clipping_by_hand():
    old = torch.zeros(1, 5)
    logp = torch.tensor([[math.log(1.5), math.log(0.5), math.log(0.5), math.log(1.5), 3.0]],
                        requires_grad=True)
    adv = torch.tensor([[1.0, 1.0, -2.0, -2.0, 50.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    # per token max(-A rho, -A clip(rho, 0.8, 1.2)):
    #   rho 1.5, A  1: max(-1.5, -1.2) = -1.2   clipped
    #   rho 0.5, A  1: max(-0.5, -0.8) = -0.5
    #   rho 0.5, A -2: max( 1.0,  1.6) =  1.6   clipped
    #   rho 1.5, A -2: max( 3.0,  2.4) =  3.0
    loss, m = ppo_policy_loss(logp, old, adv, mask, clip=0.2)
    assert loss.item() == approx((-1.2 - 0.5 + 1.6 + 3.0) / 4)
    assert m["clipfrac"] == approx(0.5)
    assert m["ratio"] == approx(1.0)
    assert m["approx_kl"] == approx(0.5 * (2 * math.log(1.5) ** 2 + 2 * math.log(0.5) ** 2) / 4)
    loss.backward()
    # clipped tokens (and the masked one) get no gradient; d(-A rho)/dlogp = -A rho / 4 otherwise
    assert logp.grad[0].tolist() == approx([0.0, -0.5 / 4, 0.0, 3.0 / 4, 0.0])
    # -inf / huge values on a masked position do not turn the loss into nan
    bad = logp.detach().clone()
    bad[0, 4] = float("-inf")
    assert ppo_policy_loss(bad, old + 200.0 * (1 - mask), adv, mask)[0].item() == approx(2.9 / 4)
    # a caller-provided token count (the whole step's) replaces the denominator
    assert ppo_policy_loss(logp, old, adv, mask, num_tokens=8)[0].item() == approx(2.9 / 8)


def test_ppo_value_loss_by_hand():
    v = torch.tensor([[1.0, 0.6, 0.0, 9.0]])
    old = torch.tensor([[0.5, 0.5, 0.5, 0.0]])
    ret = torch.tensor([[1.0, 0.0, 1.0, -9.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # clip 0.2: V_clip = [0.7, 0.6, 0.3]
    #   (V-R)^2 = [0, 0.36, 1], (V_clip-R)^2 = [0.09, 0.36, 0.49] -> max [0.09, 0.36, 1]
    loss, m = ppo_value_loss(v, old, ret, mask, clip=0.2)
    assert loss.item() == approx(0.5 * (0.09 + 0.36 + 1.0) / 3)
    assert m["vf_clipfrac"] == approx(1 / 3)


def test_entropy_from_logits():
    logits = torch.zeros(1, 2, 4)
    logits[0, 1] = torch.tensor([10.0, -10.0, -10.0, -10.0])
    h = entropy_from_logits(logits)
    assert h[0, 0].item() == approx(math.log(4))
    assert h[0, 1].item() < 1e-6
    # temperature flattens: entropy at T=2 of logits [0, log 3] = that of [0, log 3 / 2]
    z = torch.tensor([[[0.0, math.log(9.0)]]])
    p = torch.tensor([1 / 4, 3 / 4])  # softmax of [0, log 3]
    assert entropy_from_logits(z, temperature=2.0).item() == approx(-(p * p.log()).sum().item())


# ----------------------------------------------------------------------------- rollout


@pytest.fixture(scope="module")
def base(world):
    from rlhfkit.modeling import load_causal_lm, load_tokenizer

    # On a shared 2-core machine a 2-thread matmul waits on the busy core (about 50x slower for
    # this tiny model); one thread is faster here. Restored after the module.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tok = load_tokenizer(str(world / "base"))
    yield load_causal_lm(str(world / "base"), tok), tok
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prompts(world):
    import json

    rows = (world / "prompts.jsonl").read_text().splitlines()[:6]
    return [json.loads(r)["prompt"] for r in rows]


def test_truncate_after_eos_by_hand():
    from rlhfkit.generation import truncate_after_eos
    from rlhfkit.rl.rollout import apply_no_eos_penalty

    new = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 0, 0, 0]])  # eos 2, pad 0
    ids, mask, ended = truncate_after_eos(new, eos_id=2, pad_id=0)
    assert ids.tolist() == [[5, 2, 0, 0], [5, 6, 7, 8], [2, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert ended.tolist() == [True, False, True]
    s = torch.tensor([0.5, 0.7, -0.2])
    assert apply_no_eos_penalty(s, ended, -1.0, "replace").tolist() == approx([0.5, -1.0, -0.2])
    assert apply_no_eos_penalty(s, ended, 2.0, "subtract").tolist() == approx([0.5, -1.3, -0.2])
    assert apply_no_eos_penalty(s, ended, None).tolist() == approx(s.tolist())


def test_rollout_logprobs_match_fresh_forward_and_first_ratio_is_one(base, prompts):
    from rlhfkit.data.collate import response_batch
    from rlhfkit.logprobs import sequence_logprobs, token_logprobs
    from rlhfkit.rl.rollout import generate_rollout

    model, tok = base
    # batch_size 5: 12 rows sampled in chunks of 5, 5, 2 with different prompt widths
    r = generate_rollout(model, tok, prompts, num_samples=2, max_new_tokens=16, temperature=0.7, seed=0,
                         batch_size=5)
    b = len(prompts) * 2
    assert r.input_ids.shape[0] == b and r.logprobs.shape == (b, r.input_ids.shape[1] - 1)
    assert r.query_ids[0] == r.query_ids[1] and r.prompts[2] == prompts[1]  # group layout
    # Training-mode forward with gradients, as on the first PPO minibatch: ratio 1 to float error.
    model.train()
    logits = model(**r.model_inputs()).logits
    logp = token_logprobs(logits, r.input_ids, 0.7)  # (B, T-1)
    model.eval()
    mask = r.token_mask
    assert ((logp - r.logprobs) * mask).abs().max().item() < 1e-6
    adv = torch.randn(logp.shape, generator=torch.Generator().manual_seed(0))
    loss, m = ppo_policy_loss(logp, r.logprobs, adv, mask)
    assert abs(m["ratio"] - 1) < 1e-6 and m["clipfrac"] == 0.0 and m["approx_kl"] < 1e-12
    assert loss.item() == approx(-(adv * mask).sum().item() / mask.sum().item(), 1e-5)
    # Right-padded layout (prompt at column 0): same summed log-probs per row.
    rb = response_batch(r.query_ids, r.response_ids, tok.pad_token_id, "right")
    with torch.no_grad():
        sums, n = sequence_logprobs(model, rb, temperature=0.7)
    assert n.tolist() == r.response_lengths.tolist()
    assert torch.allclose(sums, r.logprobs.sum(-1), atol=1e-4)


def test_rollout_without_logprobs_samples_the_same_tokens(base, prompts):
    """``compute_logprobs=False`` (GRPO's one-update path) skips only the policy forward: same
    seed, same tokens and masks; the log-probs are zeros for the caller to fill."""
    from rlhfkit.rl.rollout import generate_rollout

    model, tok = base
    kw = {"num_samples": 2, "max_new_tokens": 12, "temperature": 0.7, "seed": 3}
    full = generate_rollout(model, tok, prompts, **kw)
    bare = generate_rollout(model, tok, prompts, compute_logprobs=False, **kw)
    for f in ("input_ids", "attention_mask", "position_ids", "response_mask"):
        assert torch.equal(getattr(full, f), getattr(bare, f)), f
    assert bare.logprobs.shape == full.logprobs.shape and not bare.logprobs.any()
    assert (full.logprobs * full.token_mask).abs().sum() > 0


def test_rollout_masks_everything_after_first_eos(base, prompts):
    from rlhfkit.rl.rollout import generate_rollout, score_rollout

    model, tok = base
    # Long enough that some but not all samples end (the base model was trained with EOS).
    r = generate_rollout(model, tok, prompts, num_samples=2, max_new_tokens=64, temperature=1.0, seed=0)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    assert r.ended_with_eos.any() and not r.ended_with_eos.all()
    p = r.prompt_width
    for i in range(r.input_ids.shape[0]):
        resp = r.input_ids[i, p:]
        n = int(r.response_mask[i].sum())
        assert r.response_ids[i] == resp[:n].tolist()
        if r.ended_with_eos[i]:
            assert resp[n - 1].item() == eos and eos not in resp[:n - 1].tolist()
            assert (resp[n:] == pad).all()  # everything after the first EOS is padding...
        assert r.attention_mask[i, p + n:].sum() == 0 and r.response_mask[i, p + n:].sum() == 0
        assert (r.logprobs[i, p + n - 1:] == 0).all()  # ...and carries no log-prob
        assert r.response_mask[i, :p].sum() == 0  # prompt is not response
    assert tok.eos_token not in "".join(r.texts)

    # Post-EOS positions contribute nothing downstream: garbage there changes no output.
    from rlhfkit.rl.kl import kl_k1

    g = torch.Generator().manual_seed(0)
    mask = r.token_mask  # (B, T-1)
    ref = r.logprobs + 0.1 * torch.randn(r.logprobs.shape, generator=g)
    values = torch.randn(r.logprobs.shape, generator=g)
    score = torch.randn(mask.shape[0], generator=g)

    def pipeline(logp, ref_logp, vals):
        rewards = per_token_rewards(score, kl_k1(logp, ref_logp), mask, beta=0.05)
        adv, ret = gae(rewards, vals, mask, gamma=1.0, lam=0.95)
        adv = whiten(adv, mask)
        return (adv, ret, ppo_policy_loss(logp, logp, adv, mask)[0],
                ppo_value_loss(vals, vals, ret, mask)[0])

    junk = (1 - mask) * 37.0
    for a, b in zip(pipeline(r.logprobs, ref, values),
                    pipeline(r.logprobs + junk, ref - junk, values + junk)):
        assert torch.equal(a, b)
    raw, pen = score_rollout(r, lambda ps, rs: [float(len(x)) for x in rs], no_eos_penalty=-1.0)
    assert pen[~r.ended_with_eos].eq(-1.0).all() and torch.equal(pen[r.ended_with_eos], raw[r.ended_with_eos])


def test_rollout_applies_temperature(base, prompts):
    from rlhfkit.logprobs import token_logprobs
    from rlhfkit.rl.rollout import generate_rollout

    model, tok = base
    r = generate_rollout(model, tok, prompts, max_new_tokens=12, temperature=0.7, seed=1)
    with torch.no_grad():
        logits = model(**r.model_inputs()).logits
    mask = r.token_mask
    scaled = token_logprobs(logits / 0.7, r.input_ids) * mask
    plain = token_logprobs(logits, r.input_ids) * mask
    assert torch.allclose(r.logprobs, scaled, atol=1e-6)
    assert (r.logprobs - plain).abs().max().item() > 1e-2


def test_whitening_across_processes_equals_one_big_batch():
    from rlhfkit.rl.advantages import whiten

    torch.manual_seed(0)
    x = torch.randn(6, 5)
    mask = (torch.rand(6, 5) > 0.3).long()
    whole = whiten(x, mask)
    x1, x2, m1, m2 = x[:3], x[3:], mask[:3], mask[3:]
    stats = lambda xs, ms: torch.stack([ms.float().sum(), (xs * ms).sum(), (xs * xs * ms).sum()])  # noqa: E731
    # a fake all-reduce: each "process" adds the other's sums to its own
    w1 = whiten(x1, m1, sum_across=lambda t: t + stats(x2, m2))
    w2 = whiten(x2, m2, sum_across=lambda t: t + stats(x1, m1))
    torch.testing.assert_close(torch.cat([w1, w2]), whole, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_ppo_loss_two_processes_equal_one(tmp_path):
    """Real DDP (2 gloo processes): with 11 response tokens on one process and 3 on the other, the
    averaged gradient of the PPO loss normalised by global_token_normalizer equals one process's
    gradient of the token mean over all 14 tokens; per-process token means (what DDP gave before)
    do not."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    accelerate = str(Path(sys.executable).parent / "accelerate")
    worker = Path(__file__).with_name("_ddp_token_mean.py")
    out = tmp_path / "grads.json"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
                          str(worker), str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    diff = json.loads(out.read_text())
    assert diff["global"] < 1e-6, diff
    assert diff["naive"] > 1e-3, diff


def test_collapse_monitors_by_hand():
    from types import SimpleNamespace

    from rlhfkit.rl.monitors import CollapseWatch, check_alarms, cross_prompt_similarity, top_completion_share

    assert top_completion_share([[1, 2], [3, 4], [1, 2], [5]]) == 0.5
    # prompts 0 and 1, k=2: only cross-prompt pairs count. Bigram sets {(1,2)}, {(1,2)}, {(1,2),(2,3)},
    # {(4,5)}: pairs (0,2): 1/2, (0,3): 0, (1,2): 1/2, (1,3): 0 -> mean 0.25
    assert cross_prompt_similarity([[1, 2], [1, 2], [1, 2, 3], [4, 5]], k=2) == 0.25
    watch = CollapseWatch(0.5)
    start = {"distinct_2": 0.6, "entropy": 1.4, "top_completion_share": 0.05}
    assert watch.check(start) == (1.0, [])  # the first step is the baseline
    ratio, reasons = watch.check({"distinct_2": 0.33, "entropy": 1.4, "top_completion_share": 0.05})
    assert ratio == pytest.approx(0.55) and reasons == []
    ratio, reasons = watch.check({"distinct_2": 0.24, "entropy": 0.6, "top_completion_share": 0.6})
    assert ratio == pytest.approx(0.4) and len(reasons) == 3
    cfg = SimpleNamespace(collapse_alarm="warn", max_kl=1.0, kl_alarm="stop", gap_alarm_steps=0,
                          gap_alarm="warn")
    m = {"distinct_2": 0.1, "entropy": 0.5, "top_completion_share": 0.9, "seq_kl": 2.0}
    alarm = check_alarms(cfg, m, [], 7, watch)
    assert alarm["kind"] == "kl" and alarm["action"] == "stop"  # a stopping alarm wins over a warning
    assert m["alarm_collapse"] == 1 and m["alarm_kl"] == 1


def test_collapse_watch_catches_one_template_for_every_prompt():
    """Token-distinct completions (the item swapped into one template) keep the top-completion share
    low; cross-prompt similarity is what gives them away. Dissimilarity = 1 - similarity against its
    start: 0.9 -> 0.4 is 44% of the start, below the 0.5 threshold."""
    from rlhfkit.rl.monitors import CollapseWatch

    watch = CollapseWatch(0.5)
    base = {"distinct_2": 0.6, "entropy": 1.4, "top_completion_share": 0.05}
    assert watch.check({**base, "cross_prompt_similarity": 0.1}) == (1.0, [])
    ratio, reasons = watch.check({**base, "cross_prompt_similarity": 0.3})  # 0.7 / 0.9
    assert ratio == pytest.approx(0.7 / 0.9) and reasons == []
    ratio, reasons = watch.check({**base, "cross_prompt_similarity": 0.6})
    assert ratio == pytest.approx(0.4 / 0.9) and reasons == ["dissimilarity at 44% of its start"]
    # A baseline from a checkpoint written before dissimilarity was watched still works.
    old = CollapseWatch(0.5, baseline=dict(base))
    assert old.check({**base, "cross_prompt_similarity": 0.9}) == (1.0, [])
