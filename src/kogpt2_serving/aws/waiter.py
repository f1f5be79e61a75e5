"""Poll a describe call until a resource settles, printing each status change as it happens.

boto3's own waiters are silent for up to an hour and end in a generic WaiterError; this one
shows progress, and on failure returns the description so callers can quote FailureReason.
"""
import time

from .calls import out, send
from .errors import DeploymentError


def wait_for_status(clients, call, status_key, done, failed, label, failure_hint="", poll_seconds=30,
                    timeout_seconds=3600, write=out, sleep=time.sleep, clock=time.monotonic):
    """Describe repeatedly until `status_key` is in `done` (returns the description) or in `failed`
    (raises DeploymentError with the FailureReason and `failure_hint`). Prints "label: Status (N s)"
    when the status changes."""
    started = clock()
    last = None
    while True:
        description = send(clients, call, write, quiet=True)
        status = description[status_key]
        elapsed = int(clock() - started)
        if status != last:
            write("   {}: {} ({} s)".format(label, status, elapsed))
            last = status
        if status in done:
            return description
        if status in failed:
            reason = description.get("FailureReason") or "no reason given"
            raise DeploymentError("{} is {}: {}{}".format(label, status, reason,
                                                          "\n  fix: " + failure_hint if failure_hint else ""))
        if elapsed >= timeout_seconds:
            raise DeploymentError("{} is still {} after {} s: check it in the SageMaker console, or wait longer "
                                  "with --wait-timeout".format(label, status, elapsed))
        sleep(poll_seconds)
