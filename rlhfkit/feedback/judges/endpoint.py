"""An OpenAI-compatible chat-completions endpoint as a pairwise judge (OpenAI, vLLM, llama.cpp, TGI).

Transport: the standard library's ``urllib`` in a thread pool (``concurrency`` requests in flight),
so the judge needs no HTTP client beyond what Python ships. A shared rate limiter spaces requests
``1 / requests_per_second`` apart, retries included. A 429, a 5xx, a timeout or a connection error is
retried up to ``max_retries`` times after ``backoff_seconds * 2**attempt`` (at most
``max_backoff_seconds``), or after the server's ``Retry-After`` when that is longer (it is honoured
even beyond the cap: the server knows its quota). Any other 4xx stops the run at once: retrying a
wrong key or URL only costs money. The API key is read from the environment variable
``api_key_env`` names, never from the config.

Reading the answer. Each request asks for temperature 0, ``max_tokens`` tokens and, unless
``top_logprobs: 0``, the log-probabilities of the first answer token. When the server returns them,
P(A) = the softmax over the two labels' probability mass among the first token's ``top_logprobs``
(tokens equal to a label up to surrounding white space are summed; a label absent from the list
counts as probability 0, i.e. below everything listed). Otherwise (no logprobs returned, or neither
label among them) P(A) is 1 or 0 from the first label found as a word in the answer text; an answer
with neither label is a failed query (the task is skipped and counted in summary.json).

Answers are handed to the runner's journal from the main thread as they complete, so on an error
the answers already received are kept (the in-flight ones still finish and are journaled too).
"""

from __future__ import annotations

import email.utils
import http.client
import json
import math
import os
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import UTC, datetime

from rlhfkit.feedback.judges.base import Answer, JudgeError, Query, judge_messages


class RateLimiter:
    """At most ``rate`` calls of :meth:`wait` per second over all threads (evenly spaced slots)."""

    def __init__(self, rate: float, clock=time.monotonic, sleep=time.sleep):
        self.interval, self.clock, self.sleep = 1.0 / rate, clock, sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:  # reserve the next slot under the lock, sleep outside it
            now = self.clock()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            self.sleep(slot - now)


def retry_after(value: str | None) -> float:
    """Seconds a Retry-After header asks for (delta-seconds or an HTTP date); 0 when absent or bad."""
    if not value:
        return 0.0
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0.0
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _logsumexp(values: list[float]) -> float:
    if not values:
        return -math.inf
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def _from_logprobs(choice: dict, labels: list[str]) -> float | None:
    content = (choice.get("logprobs") or {}).get("content") or []
    if not content or not isinstance(content[0], dict):
        return None
    first = content[0]
    seen: dict[str, float] = {}  # token -> logprob; the sampled token is usually among top_logprobs too
    for c in [*(first.get("top_logprobs") or []), first]:
        tok, lp = c.get("token"), c.get("logprob")
        if isinstance(tok, str) and isinstance(lp, (int, float)) and tok not in seen:
            seen[tok] = float(lp)
    mass = [_logsumexp([lp for tok, lp in seen.items() if tok.strip() == label.strip()]) for label in labels]
    if mass[0] == mass[1] == -math.inf:
        return None
    if mass[1] == -math.inf:
        return 1.0
    if mass[0] == -math.inf:
        return 0.0
    return 1.0 / (1.0 + math.exp(mass[1] - mass[0]))


def _from_text(text: str, labels: list[str]) -> float | None:
    hits = []
    for value, label in ((1.0, labels[0]), (0.0, labels[1])):
        m = re.search(r"(?<!\w)" + re.escape(label.strip()) + r"(?!\w)", text)
        if m:
            hits.append((m.start(), value))
    return min(hits)[1] if hits else None


def read_preference(response: dict, labels: list[str]) -> tuple[float | None, dict]:
    """(P(first better), info) from a chat-completions response; see the module docstring."""
    try:
        choice = response["choices"][0]
    except (KeyError, IndexError, TypeError):
        return None, {"error": f"no choices in the response: {str(response)[:200]}"}
    p = _from_logprobs(choice, labels)
    if p is not None:
        return p, {"source": "logprobs"}
    text = str((choice.get("message") or {}).get("content") or "")
    p = _from_text(text, labels)
    if p is not None:
        return p, {"source": "text", "text": text[:200]}
    return None, {"error": f"neither label {labels} in the answer {text[:200]!r}"}


class OpenAIJudge:
    pointwise = False

    def __init__(self, spec):
        self.spec = spec
        key = None
        if spec.api_key_env:
            key = os.environ.get(spec.api_key_env)
            if not key:
                raise JudgeError(f"judge.api_key_env: the environment variable {spec.api_key_env} is not "
                                 "set (or empty); export the API key in it, or set api_key_env: null for a "
                                 "server without authentication")
        self.url = spec.base_url + "/chat/completions"
        self.headers = {"Content-Type": "application/json"}
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        self.limiter = RateLimiter(spec.requests_per_second)
        self.requests = 0  # HTTP requests sent, retries included (summary.json)
        self.retries = 0
        self._count = threading.Lock()

    def body(self, q: Query) -> dict:
        body = {"model": self.spec.model, "temperature": 0, "max_tokens": self.spec.max_tokens,
                "messages": judge_messages(self.spec, q.prompt, q.texts[0], q.texts[1])}
        if self.spec.top_logprobs:
            body.update(logprobs=True, top_logprobs=self.spec.top_logprobs)
        return body

    def _refused(self, code: int, text: str) -> JudgeError:
        hint = {401: f" (check the API key in ${self.spec.api_key_env})",
                403: " (check the key's permissions)",
                404: " (check judge.base_url, which includes the API version such as /v1, and judge.model)"}
        return JudgeError(f"judge.base_url: {self.url} refused the request with HTTP {code}"
                          f"{hint.get(code, '')}: {text}")

    def post(self, body: dict) -> dict:
        """One request with retries (module docstring); the parsed JSON answer."""
        data = json.dumps(body).encode("utf-8")
        spec, last = self.spec, ""
        for attempt in range(spec.max_retries + 1):
            self.limiter.wait()
            with self._count:
                self.requests += 1
                self.retries += attempt > 0
            request = urllib.request.Request(self.url, data=data, headers=self.headers, method="POST")
            wait = min(spec.max_backoff_seconds, spec.backoff_seconds * 2 ** attempt)
            try:
                with urllib.request.urlopen(request, timeout=spec.timeout_seconds) as r:
                    raw = r.read()
            except urllib.error.HTTPError as e:
                text = e.read()[:300].decode("utf-8", "replace")
                if e.code != 429 and e.code < 500:
                    raise self._refused(e.code, text) from None
                last = f"HTTP {e.code}: {text}"
                wait = max(wait, retry_after(e.headers.get("Retry-After")))
            except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
                # connection refused or reset, a timeout: the server may be back in a moment
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            else:
                try:
                    return json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    raise JudgeError(f"judge.base_url: {self.url} answered with something that is not JSON: "
                                     f"{raw[:200]!r}") from None
            if attempt < spec.max_retries:
                time.sleep(wait)
        raise JudgeError(f"judge.base_url: no answer from {self.url} after {spec.max_retries + 1} attempts "
                         f"(last: {last}); answers received so far are kept in the journal")

    def _one(self, q: Query) -> tuple[float | None, dict]:
        return read_preference(self.post(self.body(q)), self.spec.labels)

    def ask(self, queries: list[Query], answer: Answer) -> None:
        if not queries:
            return
        error: BaseException | None = None
        with ThreadPoolExecutor(max_workers=self.spec.concurrency) as pool:
            futures = {pool.submit(self._one, q): q for q in queries}
            try:
                for fut in as_completed(futures):
                    try:
                        p, info = fut.result()
                    except BaseException as e:  # noqa: B036 -- stop sending, but keep what arrives
                        if error is None:
                            error = e
                            for other in futures:
                                other.cancel()
                        continue
                    answer(futures[fut], p, info)
            except BaseException:
                for other in futures:  # the journal (or a kill) failed: send nothing more
                    other.cancel()
                raise
        if error is not None:
            raise error
