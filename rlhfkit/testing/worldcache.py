"""The quick synthetic world, built once per machine and code state and shared by the test suite
and the benchmarks that reuse it (``bench/kill_resume.py``).

It lives in ``<cache>/test-world-<key>``. The key hashes the world config *and* the source of the
code that builds it (the package's top-level modules and ``config/``, ``losses/``, ``synthetic/``,
``train/``, ``data/``): a change to training numerics (say, the optimizer kernel) yields a slightly
different base model, and a test tuned on a stale local world could pass here and fail on CI's fresh
one. A file lock lets parallel pytest-xdist workers share one build instead of racing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def quick_world_config(out: Path):
    from rlhfkit.demo import world_config

    cfg = world_config(Path(out).parent, quick=True)
    cfg.output_dir = str(out)
    return cfg


def world_key() -> str:
    pkg = Path(__file__).resolve().parents[1]
    h = hashlib.sha1(json.dumps(quick_world_config(Path("x")).model_dump(mode="json", exclude={"output_dir"}),
                                sort_keys=True).encode())
    packages = ("config", "losses", "synthetic", "train", "data")
    for f in sorted([*pkg.glob("*.py"), *(f for d in packages for f in (pkg / d).rglob("*.py"))]):
        h.update(f.relative_to(pkg).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:10]


def cached_quick_world(cache: Path) -> Path:
    """Build (or reuse) the quick world under ``cache``; returns its directory."""
    from filelock import FileLock

    from rlhfkit.synthetic.world import build

    cache = Path(cache)
    key = world_key()
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache / f"test-world-{key}.lock")):
        return Path(build(quick_world_config(cache / f"test-world-{key}")))
