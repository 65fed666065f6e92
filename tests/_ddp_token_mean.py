"""Worker for test_rl_mechanics.py::test_ppo_loss_two_processes_equal_one: launched with
`accelerate launch --multi_gpu --num_processes 2`. Each process holds a different number of
response tokens; the DDP-averaged gradient of the PPO policy loss (normalised as the PPO stage
does, by ``global_token_normalizer``) must equal one process's gradient of the token mean over
all tokens. Writes the max abs difference (and the naive per-process-mean one) to argv[1]."""

import json
import sys

import torch
from accelerate import Accelerator

from rlhfkit.losses import ppo_policy_loss
from rlhfkit.distributed import global_token_normalizer

acc = Accelerator(cpu=True)
torch.manual_seed(0)
V, D, T = 7, 5, 6
x = torch.randn(4, T, D)  # 4 episodes: rank r holds rows [2r, 2r + 2)
ids = torch.randint(0, V, (4, T))
mask = torch.tensor([[1] * 6, [1] * 5 + [0], [1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]])  # 11 vs 3 tokens
adv = torch.randn(4, T)
old = torch.randn(4, T) * 0.1 - 2.0
w0 = torch.randn(D, V)


def loss_of(net, rows, num_tokens):
    lp = torch.log_softmax(net(x[rows]), -1).gather(-1, ids[rows].unsqueeze(-1)).squeeze(-1)  # (b, T)
    return ppo_policy_loss(lp, old[rows], adv[rows], mask[rows], clip=0.2, num_tokens=num_tokens)[0]


def fresh():
    net = torch.nn.Linear(D, V, bias=False)
    with torch.no_grad():
        net.weight.copy_(w0.T)
    return net


out = {}
for name, normalise in (("global", True), ("naive", False)):
    ddp = acc.prepare(fresh())
    rows = [2 * acc.process_index, 2 * acc.process_index + 1]
    n_tok = global_token_normalizer(acc, mask[rows]) if normalise else None
    acc.backward(loss_of(ddp, rows, n_tok))
    grad = acc.unwrap_model(ddp).weight.grad.detach().clone()
    single = fresh()
    loss_of(single, [0, 1, 2, 3], None).backward()  # one process, the whole minibatch, token mean
    out[name] = float((grad - single.weight.grad).abs().max())
if acc.is_main_process:
    with open(sys.argv[1], "w") as f:
        json.dump(out, f)
acc.wait_for_everyone()
