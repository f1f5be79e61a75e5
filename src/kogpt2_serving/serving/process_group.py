"""The server's processes as one group: signal it, and wait until none of it is left.

``serve`` runs Multi Model Server's launcher in a session of its own, so its process group is
exactly "this server" (launcher, JVM, Python workers); SIGTERM to the launcher alone would
orphan the workers.
"""
import os
import signal
import time


def signal_group(group, signum):
    try:
        os.killpg(group, signum)
    except (ProcessLookupError, PermissionError):
        pass


def stop_group(leader, timeout):
    """SIGTERM the process group `leader` (a Popen) leads, SIGKILL what is left after `timeout`
    s, and reap the leader; True if the group ended on SIGTERM."""
    signal_group(leader.pid, signal.SIGTERM)
    gone = wait_group_gone(leader.pid, leader, timeout)
    if not gone:
        signal_group(leader.pid, signal.SIGKILL)
        wait_group_gone(leader.pid, leader, 5.0)
    leader.wait()
    return gone


def wait_group_gone(group, launcher, timeout):
    """Wait until no live (non-zombie) process is left in the group."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        launcher.poll()  # reap our own child
        if not _live_members(group):
            return True
        time.sleep(0.1)
    return False


def _live_members(group):
    members = []
    for name in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not name.isdigit():
            continue
        try:
            with open("/proc/{}/stat".format(name)) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == group and state not in ("Z", "X"):
            members.append(int(name))
    if not os.path.isdir("/proc"):  # not Linux: signal 0 tells whether the group exists
        try:
            os.killpg(group, 0)
            members.append(group)
        except (ProcessLookupError, PermissionError):
            pass
    return members
