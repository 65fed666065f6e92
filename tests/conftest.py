"""Shared fixtures. The synthetic world is built once per machine and code state and reused
from ``.rlhfkit-cache/test-world-<key>`` under the repo (gitignored; see
``rlhfkit.testing.worldcache`` for what the key covers)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
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
    return subprocess.run([*exe, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


# Every process the suite starts inherits this marker, so the end of the session can find any that
# outlived their test -- including orphans whose parent was killed (reparented to init, so not
# anyone's child any more).
RUN_MARKER = "RLHFKIT_TEST_RUN"


def pytest_configure(config):
    """One torch thread per xdist worker: two workers on two cores, each with two threads,
    spend their time fighting over the cores."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ[RUN_MARKER] = f"{os.getpid()}-{time.time_ns()}"
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
        os.environ.setdefault("OMP_NUM_THREADS", "1")


def _survivors(marker: str) -> list:
    import psutil

    me, found = os.getpid(), []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.pid != me and p.environ().get(RUN_MARKER) == marker and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def pytest_sessionfinish(session, exitstatus):
    """The suite leaves no process behind: any process started under this session that is still
    running when it ends (xdist workers have exited by now) is killed and fails the run."""
    if os.environ.get("PYTEST_XDIST_WORKER") or RUN_MARKER not in os.environ:
        return
    import psutil

    left = _survivors(os.environ[RUN_MARKER])
    if not left:
        return
    _, alive = psutil.wait_procs(left, timeout=5)  # processes in their last second of shutdown
    if not alive:
        return
    lines = []
    for p in alive:
        try:
            lines.append(f"  pid {p.pid}: {' '.join(p.info['cmdline'] or [])[:200]}")
            p.kill()
        except psutil.NoSuchProcess:
            pass
    print("\nprocesses outlived the test session (killed now):\n" + "\n".join(lines), file=sys.stderr)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


# ---------------------------------------------------------------------------------------------
# the feedback store on SQLite and on PostgreSQL


@pytest.fixture(scope="session")
def postgres_cluster():
    """A throwaway PostgreSQL cluster for this test process (see tests/_postgres.py). Without the
    server binaries the PostgreSQL half of the store tests is skipped on a workstation, and fails in
    CI (``CI=true``), where `make test` installs them: a database the README claims must be tested."""
    from _postgres import Cluster, in_ci, server_bindir

    bindir = server_bindir()
    if bindir is None:
        message = ("PostgreSQL server binaries (initdb, pg_ctl) not found; install them: "
                   "apt-get install postgresql")
        if in_ci():
            pytest.fail(message + " (CI must run the store tests on PostgreSQL)", pytrace=False)
        pytest.skip(message)
    cluster = Cluster(bindir)
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """The URL of a fresh, empty feedback store: a SQLite file, or a new database on the throwaway
    PostgreSQL cluster (dropped afterwards). Tests taking it run once on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fb.db'}"
        return
    cluster = request.getfixturevalue("postgres_cluster")
    name, url = cluster.new_database()
    yield url
    cluster.drop_database(name)


@pytest.fixture(scope="session")
def zoo(tmp_path_factory) -> Path:
    """The conformance matrix's tiny models (eight architectures, random weights, dropout on,
    hostile generation_config.json) and tokenizers (five chat-template conventions)."""
    from rlhfkit.testing.conformance import ARCHITECTURES, TEMPLATES, build_model, build_tokenizer

    root = tmp_path_factory.mktemp("zoo")
    for t in TEMPLATES:
        build_tokenizer(t, root / f"tok-{t}")
    for a in ARCHITECTURES:
        build_model(a, root / f"model-{a}")
    return root
