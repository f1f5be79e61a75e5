"""Endpoint latency: N identical requests, the first (warm-up) excluded from the timings.

The 2020 walkthrough's loop wrapped everything in a bare `except` that printed "Error and
ingore it.", which hid its own bug (`pred_count_sum =+ predict_count` kept only the last
count). Here a failed call is counted and its message shown, the token count of every
response is summed, and the report gives mean/p50/p95 seconds per request and per
generated token. Only failures of the call itself are counted as errors; anything else is a
bug in this module and propagates.
"""
import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import List, NamedTuple, Optional

from ..errors import ServingError

JSON = "application/json"
MAX_SHOWN_ERRORS = 5


class CallFailed(ServingError):
    """One request failed (HTTP error, connection error, unreadable response)."""

    status = 502
    kind = "call_failed"


class Sample(NamedTuple):
    seconds: float  # client-side wall time of the request
    tokens: Optional[int]  # generated tokens, when the response says
    text: str


class Stats(NamedTuple):
    count: int
    mean: float
    p50: float
    p95: float


class Report(NamedTuple):
    calls: int
    samples: List[Sample]  # timed calls (the warm-up call excluded)
    errors: List[str]  # "call N: message", every call including the warm-up


def url_sender(url, timeout=70.0):
    """POST to a local or remote /invocations URL (e.g. `kogpt2-serving serve` on port 8080)."""
    if urllib.parse.urlsplit(url).path in ("", "/"):
        url = url.rstrip("/") + "/invocations"

    def send(body, content_type=JSON, accept=JSON):
        request = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Content-Type": content_type, "Accept": accept})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.read()
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", errors="replace")[:300]
            raise CallFailed("HTTP {}: {}".format(e.code, detail.strip()))
        except (urllib.error.URLError, OSError) as e:
            raise CallFailed("{}: {}".format(url, getattr(e, "reason", e)))
    return send


def endpoint_sender(clients, endpoint):
    """InvokeEndpoint through boto3 (AWS failures arrive as ServingError subclasses)."""
    from .invoke import invoke

    def send(body, content_type=JSON, accept=JSON):
        return invoke(clients, endpoint, body, content_type, accept, write=lambda line: None).body
    return send


def parse_response(raw):
    """-> (text, generated token count or None). Knows the walkthrough's
    `[text, tokens, seconds]` and `[{"generated_text": ..., "details": {"generated_tokens": n}}]`."""
    try:
        value = json.loads(raw.decode("utf-8"))
    except ValueError as e:
        raise CallFailed("response is not JSON ({}): {!r}".format(e, raw[:100]))
    if isinstance(value, list) and len(value) == 3 and isinstance(value[0], str) and isinstance(value[1], int):
        return value[0], value[1]
    if isinstance(value, list) and value and isinstance(value[0], dict) and "generated_text" in value[0]:
        details = value[0].get("details") or {}
        return value[0]["generated_text"], details.get("generated_tokens")
    return json.dumps(value, ensure_ascii=False), None


def measure(send, body, calls, content_type=JSON, accept=JSON, clock=time.perf_counter, progress=None):
    """Send `calls` requests one after another; call 1 warms up and is not timed."""
    samples, errors = [], []
    for number in range(1, calls + 1):
        try:
            elapsed, raw = _timed(send, clock, body, content_type, accept)
            text, tokens = parse_response(raw)
        except ServingError as e:
            errors.append("call {}: {}".format(number, e.message))
        else:
            if number > 1:
                samples.append(Sample(elapsed, tokens, text))
        if progress:
            progress(number, calls)
    return Report(calls, samples, errors)


def _timed(send, clock, *args):
    """-> (seconds, response). The clock is read after a failed call too, so an injected clock
    stays in step with the calls."""
    started = clock()
    try:
        raw = send(*args)
    finally:
        elapsed = clock() - started
    return elapsed, raw


def percentile(values, q):
    """Linear interpolation between the closest ranks (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low, high = int(math.floor(position)), int(math.ceil(position))
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def stats(values):
    if not values:
        return None
    return Stats(len(values), sum(values) / len(values), percentile(values, 50), percentile(values, 95))


def per_token(samples):
    return [s.seconds / s.tokens for s in samples if s.tokens]


def format_report(report, prompt):
    lines = ["prompt: {}".format(prompt),
             "calls: {} ({} timed, first call excluded as warm-up), errors: {}".format(
                 report.calls, len(report.samples), len(report.errors))]
    lines += ["  " + e for e in report.errors[:MAX_SHOWN_ERRORS]]
    if len(report.errors) > MAX_SHOWN_ERRORS:
        lines.append("  ... and {} more".format(len(report.errors) - MAX_SHOWN_ERRORS))
    if report.samples:
        lines.append("last output: {}".format(report.samples[-1].text))
    lines.append(_stats_line("seconds per request", stats([s.seconds for s in report.samples])))
    counted = [s.tokens for s in report.samples if s.tokens is not None]
    if counted:
        lines.append("generated tokens per request: mean {:.2f}".format(sum(counted) / len(counted)))
    lines.append(_stats_line("seconds per generated token", stats(per_token(report.samples)),
                             "n/a (responses carry no token count)"))
    return lines


def _stats_line(label, result, missing="n/a (no successful timed call)"):
    if result is None:
        return "{}: {}".format(label, missing)
    return "{}: mean {:.4f}  p50 {:.4f}  p95 {:.4f}  (n={})".format(label, result.mean, result.p50, result.p95,
                                                                  result.count)
