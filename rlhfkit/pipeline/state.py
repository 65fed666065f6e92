"""Which steps of a pipeline are done (detail 3 of :mod:`rlhfkit.pipeline`): a fingerprint per
step, and the state file that records them, written atomically so a kill never leaves it torn."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def step_fingerprints(steps: list) -> dict[str, str]:
    """Each step's fingerprint: its inputs and the fingerprints of the steps it reads, so a change
    upstream reruns everything downstream (steps come in plan order: upstream ones first)."""
    fps: dict[str, str] = {}
    for s in steps:
        fps[s.key] = fingerprint({"inputs": s.inputs(), "upstream": [fps.get(k) for k in s.after]})
    return fps


class PipelineState:
    """``.pipeline/state.json``: ``{step key: {fingerprint, done, output, seconds, result}}``."""

    def __init__(self, path: Path):
        self.path = path
        self.records: dict[str, dict] = {}
        if path.is_file():
            try:
                self.records = json.loads(path.read_text())
            except json.JSONDecodeError:
                log.warning("%s is unreadable; every stage is checked again", path)

    def done(self, key: str, fp: str) -> dict | None:
        """The record of ``key`` if it finished with fingerprint ``fp`` and its output still exists."""
        rec = self.records.get(key)
        if rec and rec.get("fingerprint") == fp and rec.get("done") and Path(rec["output"]).exists():
            return rec
        return None

    def started(self, key: str, fp: str, started_at: float) -> None:
        self.records[key] = {"fingerprint": fp, "done": False, "started": started_at}
        self.save()

    def finished(self, key: str, fp: str, output: str, seconds: float, result: Any = None) -> None:
        rec = {"fingerprint": fp, "done": True, "output": output, "seconds": round(seconds, 1)}
        if result is not None:
            rec["result"] = result
        self.records[key] = rec
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.records, indent=2, default=str))
        os.replace(tmp, self.path)
