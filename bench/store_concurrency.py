"""The full-scale version of tests/test_feedback_concurrency.py (not a test): 50 annotators x 200
judgements = 10,000 judgements racing through one project's queue, on SQLite and on a throwaway
PostgreSQL cluster (tests/_postgres.py; needs Debian's `postgresql` server package).

    python bench/store_concurrency.py [--annotators 50] [--each 200] [--per-task 10]
        [--backends sqlite,postgresql] [--output runs/bench_store_concurrency]

Prints one line per backend (judgements, seconds, judgements/s, lost, duplicated, max per task) and
writes them to <output>/store_concurrency.json. Exit status 1 if anything was lost or duplicated, a
task went over its cap, or a thread was still running at the deadline.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--annotators", type=int, default=50)
    ap.add_argument("--each", type=int, default=200)
    ap.add_argument("--per-task", type=int, default=10)
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--deadline", type=float, default=1800.0)
    ap.add_argument("--output", default="runs/bench_store_concurrency")
    args = ap.parse_args()
    from rlhfkit.testing.queue_load import run_queue_load

    results, ok = [], True
    for backend in args.backends.split(","):
        cluster = None
        with tempfile.TemporaryDirectory() as tmp:
            if backend == "sqlite":
                url = f"sqlite:///{tmp}/store.db"
            elif backend == "postgresql":
                sys.path.insert(0, str(REPO / "tests"))
                from _postgres import Cluster, server_bindir

                bindir = server_bindir()
                if bindir is None:
                    print("postgresql: no server binaries (apt-get install postgresql)", file=sys.stderr)
                    return 1
                cluster = Cluster(bindir)
                url = cluster.new_database()[1]
            else:
                print(f"unknown backend {backend!r} (sqlite, postgresql)", file=sys.stderr)
                return 2
            try:
                r = run_queue_load(url, args.annotators, args.each, args.per_task, deadline_s=args.deadline)
            finally:
                if cluster is not None:
                    cluster.stop()
        row = {"backend": backend, "annotators": r.annotators, "each": r.each, "per_task": r.per_task,
               "judgements": len(r.stored), "expected": r.annotators * r.each,
               "seconds": round(r.seconds, 1), "per_second": round(len(r.stored) / max(r.seconds, 1e-9), 1),
               "lost": len(r.lost), "duplicated": r.duplicated, "max_per_task": r.max_per_task,
               "failures": r.failures[:5], "alive": r.alive}
        good = (not r.failures and r.alive == 0 and row["judgements"] == row["expected"] and not r.lost
                and r.duplicated == 0 and r.max_per_task <= r.per_task)
        ok &= good
        print(f"{backend}: {row['judgements']} judgements by {r.annotators} annotators in {row['seconds']} s "
              f"({row['per_second']}/s); lost {row['lost']}, duplicated {row['duplicated']}, "
              f"max per task {row['max_per_task']}/{r.per_task} -> {'ok' if good else 'FAILED'}")
        results.append(row)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "store_concurrency.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
