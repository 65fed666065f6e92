"""AI judges as annotators (`rlhf label judge`): one module per kind and the run that asks them.

- ``base``: questions (:class:`Query`), the both-order verdict, the spec hash, the answer journal;
- ``function``: a reward-model directory and a Python function (pointwise or pairwise);
- ``local_lm``: a local causal LM, preference read from the next-token logits of the two labels;
- ``endpoint``: an OpenAI-compatible chat-completions server (threads, retries, rate limit);
- ``run``: registration as a ``judge`` annotator, the queue loop, verdicts and summary.json.

Importing this package does not import torch.
"""

from rlhfkit.feedback.judges.base import Journal, JudgeError, Query, pair_verdict, spec_hash, strength_of
from rlhfkit.feedback.judges.run import Verdicts, build_judge, judge_labels, task_queries

__all__ = ["Journal", "JudgeError", "Query", "Verdicts", "build_judge", "judge_labels", "pair_verdict",
           "spec_hash", "strength_of", "task_queries"]
