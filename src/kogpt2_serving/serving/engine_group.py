"""``serve``'s engines as one: an :class:`~.engine_supervisor.EngineSupervisor` per engine of an
:class:`~.engine_plan.EnginePlan`, started together, watched apart, stopped together.

Each engine is restarted alone when it dies, so the others keep serving meanwhile (clients
skip an engine whose socket refuses: :mod:`.engine_pool`), and each keeps its own give-up rule;
one supervisor giving up is reason enough for ``serve`` to exit 1 (a device that cannot keep
an engine up is a broken instance). The server is ready while at least one engine serves.
A cancel from the gateway goes to every engine: only the server's clients know which engine
a light worker chose, and an engine forgets a cancel for a request it never sees (its
CANCELLED_TTL).
"""
import logging
import os
import threading

from ..errors import ServingError
from ..settings import OMP_THREADS_ENV, THREADS_ENV
from .engine_client import engine_call
from .engine_supervisor import EngineSupervisor

log = logging.getLogger(__name__)

MAX_OF = ("max_rows",)  # counters that are a maximum, not a sum, across engines
PER_ENGINE = ("ok", "engine", "device", "pid", "error")  # fields of one engine's stats that do not add up


def socket_path(run_dir, index):
    return os.path.join(run_dir, "engine-{}.sock".format(index))


def engine_environment(env, plan):
    """An engine's environment: the plan's threads per engine, unless the operator chose them."""
    engine_env = dict(env)
    if plan.threads is not None:
        engine_env.update({THREADS_ENV: str(plan.threads), OMP_THREADS_ENV: str(plan.threads)})
    return engine_env


def label(plan, index):
    """How logs and errors name an engine: as before with one; 'engine 2 of 4 (gpu:1)' with several."""
    if plan.count == 1:
        return "the engine process"
    return "engine {} of {} ({})".format(index + 1, plan.count, plan.devices[index])


class EngineGroup:
    def __init__(self, model_dir, plan, run_dir, dtype, env, output):
        self.plan = plan
        engine_env = engine_environment(env, plan)
        self.supervisors = [EngineSupervisor(model_dir, socket_path(run_dir, i), device, dtype, engine_env, output,
                                             label=label(plan, i)) for i, device in enumerate(plan.devices)]

    @property
    def socket_paths(self):
        return tuple(s.socket_path for s in self.supervisors)

    @property
    def pids(self):
        return [s.pid for s in self.supervisors]

    @property
    def pid(self):
        """The first engine's pid (the only one's, with one engine)."""
        return self.supervisors[0].pid

    def describe_pids(self):
        """'the engine process (pid 12)' or '2 engine processes (pids 12, 13)', for the log."""
        if len(self.supervisors) == 1:
            return "the engine process (pid {})".format(self.pid)
        return "{} engine processes (pids {})".format(len(self.supervisors), ", ".join(map(str, self.pids)))

    def start(self, timeout, should_stop=None):
        """Launch every engine at once, then wait until each has loaded its model (or should_stop())."""
        try:
            for supervisor in self.supervisors:
                supervisor.launch()
            for supervisor in self.supervisors:
                supervisor.wait_started(timeout, should_stop)
                if should_stop is not None and should_stop():
                    break
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def failed(self):
        """Why one engine's supervisor gave up (serve then exits 1), or None."""
        return next((s.failed for s in self.supervisors if s.failed), None)

    def problem(self):
        """None while at least one engine serves (/ping may say 200), else why none does."""
        if any(s.ready for s in self.supervisors):
            return None
        if self.failed:
            return self.failed
        return "the engine process is restarting" if len(self.supervisors) == 1 else \
            "every engine process is restarting"

    def stop(self, timeout=10.0):
        """Stop every engine at once (each its own process group), so SIGTERM waits once, not N times."""
        threads = [threading.Thread(target=s.stop, args=(timeout,), name="engine-stop", daemon=True)
                   for s in self.supervisors]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout + 10)

    def cancel(self, request_id):
        """A client hung up: tell every engine (the one holding the request drops its rows)."""
        for path in self.socket_paths:
            try:
                engine_call(path, {"op": "cancel", "id": request_id}, timeout=5)
            except ServingError as e:
                log.debug("cancelling %s at %s: %s", request_id, path, e.message)

    def stats(self):
        """Each engine's scheduler counters, with its index, device and pid; an engine that
        does not answer (restarting) has its error instead of counters."""
        found = []
        for i, supervisor in enumerate(self.supervisors):
            entry = {"engine": i, "device": supervisor.device, "pid": supervisor.pid}
            try:
                entry.update(engine_call(supervisor.socket_path, {"op": "stats"}, timeout=10))
            except ServingError as e:
                entry.update(ok=False, error=e.message)
            found.append(entry)
        return found


def total_stats(per_engine):
    """The engines' counters added up (max_rows: the largest), over the engines that answered."""
    total = {}
    for stats in per_engine:
        if stats.get("ok") is False:
            continue
        for key, value in stats.items():
            if key in PER_ENGINE or not isinstance(value, (int, float)):
                continue
            total[key] = max(total.get(key, value), value) if key in MAX_OF else total.get(key, 0) + value
    return total
