"""The benchmarks' peak memory is the child's own, not its parent's (issue 18, item 4).

Each side of a `bench/*_vs_trl.py` comparison runs in a child of a parent that already holds torch
and the world. ``ru_maxrss`` carries the parent's high-water mark across fork and exec, so every
child used to report the parent's peak; `bench/_common.peak_rss_mb` reads ``VmHWM`` instead."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The parent touches 400 MB, then starts a child that allocates nothing and reports two peaks: the
# old measurement (ru_maxrss) and the new one (bench/_common.peak_rss_mb).
PARENT = r"""
import resource, subprocess, sys
big = bytearray(400 * 1024 * 1024)
for i in range(0, len(big), 4096):
    big[i] = 1
child = '''
import json, resource, sys
sys.path.insert(0, sys.argv[1])
from _common import peak_rss_mb
old = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"vmhwm": peak_rss_mb(), "ru_maxrss": old}))
'''
out = subprocess.run([sys.executable, "-c", child, sys.argv[1]], capture_output=True, text=True, check=True)
print(out.stdout.strip().splitlines()[-1])
"""


def test_a_child_reports_its_own_peak_not_the_parents():
    import json

    p = subprocess.run([sys.executable, "-c", PARENT, str(REPO / "bench")], capture_output=True, text=True,
                       timeout=120, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["ru_maxrss"] > 400, r  # the old figure: the parent's 400 MB bytearray carried over
    # The child's own peak: a Python interpreter and the bench module (measured 14 MB; ru_maxrss 412).
    assert 1 < r["vmhwm"] < 150, r
