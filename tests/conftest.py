"""Shared fixtures. The synthetic world is built once per machine and code state and reused
from ``.rlhfkit-cache/test-world-<key>`` under the repo (gitignored; see
``rlhfkit.testing.worldcache`` for what the key covers)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("RLHFKIT_TEST_CACHE", REPO / ".rlhfkit-cache"))


@pytest.fixture(scope="session")
def world() -> Path:
    """The --quick synthetic world (tokenizer, tiny pre-trained base, prompts, SFT data)."""
    from rlhfkit.testing.worldcache import cached_quick_world

    return cached_quick_world(CACHE)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's runs (``pytest.mark.usefixtures("one_thread")``): on two
    cores shared with another worker, more threads make the tiny models far slower. Under xdist
    this is already the default (``pytest_configure``); it matters for a plain ``pytest`` run."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def sft_model(world, tmp_path_factory) -> Path:
    """The SFT policy that DPO and RL tests start from (and their reference): the demo's quick
    SFT without evaluation, about 5 s, built once per test process."""
    from rlhfkit.demo import sft_config
    from rlhfkit.train.sft import train as sft_train

    out = tmp_path_factory.mktemp("sft")
    cfg = sft_config(world, out, quick=True)
    cfg.eval_data, cfg.eval_fraction, cfg.save_every = None, 0.0, 0
    return sft_train(cfg)


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600,
            module: bool = False) -> subprocess.CompletedProcess:
    """Run the CLI as a user types it: the `rlhf` console script (or `python -m rlhfkit`)."""
    exe = [sys.executable, "-m", "rlhfkit"] if module else [str(Path(sys.executable).parent / "rlhf")]
    full_env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    return subprocess.run([*exe, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def pytest_configure(config):
    """One torch thread per xdist worker: two workers on two cores, each with two threads,
    spend their time fighting over the cores."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
        os.environ.setdefault("OMP_NUM_THREADS", "1")
