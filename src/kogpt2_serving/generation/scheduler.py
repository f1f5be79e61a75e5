"""Continuous batching: requests join and leave one running batch at step boundaries.

The serving engine's loop (TGI's router + shard, vLLM's engine core, DJL's rolling batch, in
one thread). Each round it

1. ends rows whose request passed its deadline (`time_limit`, the text so far kept) or was
   cancelled (its client is gone: no answer, no more steps);
2. admits waiting prompts, first come first served, while the batch stays within
   :class:`~kogpt2_serving.settings.EngineLimits` (rows per step, cache slots): the newcomers are
   prefilled together, choose their first token, and take free rows of the running batch
   (``Engine.insert``: no copy of the cache; every row writes the same slot, a newcomer padded
   on the left). Only when there are not enough free rows or slots is the batch rebuilt
   (``Engine.resize``: live rows kept, compacted, in a batch of the next row bucket: 1, 2, 4,
   8, ...);
3. feeds every live row's pending token in one step and lets each choose its next one; a
   request is answered the moment its last row finishes. The live rows are kept first (a
   finished row's place is taken by the last live row, ``Engine.move_row``: one row's cache
   copied), so that a step computes only them: its size is the number of live rows
   (``step_sizes``), not the batch's, and a step's cost follows the rows that need it.

A request's rows keep their own chooser, processors, seed and budget (see
:mod:`.strategies`), so what a request gets does not depend on what it shared steps with: a
seeded sample is the same, and greedy ids are the same as alone up to float rounding of the
batch's kernels. Beam-search prompts reorder their rows by beam every step, so they do not
join: one waits at the head of the queue until the running batch has drained, then runs
alone (newcomers wait behind it, in order).

Only the scheduling thread touches the engine; ``submit`` and ``cancel`` may be called from
any thread.
"""
import collections
import logging
import threading
import time

from ..errors import RequestTooCostly, ServingError
from ..model.cache import CACHE_BUCKET, capacity_for
from ..settings import EngineLimits
from .stopping import TIME_LIMIT

log = logging.getLogger(__name__)


class QueueFull(ServingError):
    status = 503
    kind = "queue_full"


class QueueTimeout(ServingError):
    status = 503
    kind = "queue_timeout"


class Cancelled(ServingError):
    """The request's client (or its worker) is gone; nobody reads this answer."""

    status = 503
    kind = "cancelled"

    def __init__(self):
        super().__init__("the request was cancelled: its client is gone")


class Job:
    """One request: its prepared prompts, answered (``on_done(job)``) once every one finished,
    with ``results`` (one list of Sequences per prompt) or ``error`` (a ServingError).

    ``on_token(item, row, token, last)``, when given, is called on the scheduling thread for
    every token a row of it accepts (item: the prompt's index, row: the row's within the prompt,
    token: ``(id, text, logprob)``, last: whether it ended the row), so a streaming frontend can
    send it at once. It must not block: the whole batch waits for it."""

    def __init__(self, items, deadline=None, on_done=None, on_token=None):
        self.items = list(items)
        self.deadline = deadline  # time.time() at which it stops; None: never
        self.on_done = on_done
        self.on_token = on_token
        self.results = [None] * len(self.items)
        self.error = None
        self.cancelled = False
        self.started = False  # a prompt of it was admitted
        self.submitted = time.time()
        self.finished = None  # time.time() when answered
        self._open = len(self.items)

    def _finish_item(self, index, sequences):
        self.results[index] = sequences
        self._open -= 1
        if self._open == 0:
            self._answer()

    def _fail(self, error):
        if self._open:
            self._open = 0
            self.error = error
            self._answer()

    def _answer(self):
        self.finished = time.time()
        if self.on_done is not None:
            self.on_done(self)


class _Unit:
    """One prompt of a job while it decodes: its rows and seed."""

    def __init__(self, job, index):
        self.job, self.index = job, index
        self.item = job.items[index]
        self.seed, self.rows = None, []

    @property
    def params(self):
        return self.item.params

    def done(self):
        return all(row.finished for row in self.rows)


class Stats:
    """What the loop did, for logs, tests and the engine's metrics."""

    def __init__(self):
        self.steps = 0  # decode steps run
        self.row_steps = 0  # live rows summed over steps
        self.shared_steps = 0  # steps whose live rows belonged to two requests or more
        self.joins = 0  # admissions into a batch that was already running
        self.rebuilds = 0  # copies of the running batch into a new one (more rows or slots, or fewer rows)
        self.max_rows = 0
        self.requests = 0
        self.expired = 0
        self.cancelled = 0

    def as_dict(self):
        return dict(vars(self))


class ContinuousBatcher:
    def __init__(self, generator, limits=EngineLimits(), clock=time.time):
        self.generator = generator
        self.engine = generator.engine
        self.filler = generator.tokenizer.eos_id
        self.limits = limits
        self.clock = clock
        self.stats = Stats()
        self._waiting = collections.deque()  # _Unit, in arrival order
        self._waiting_jobs = 0
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._state = None  # the engine's DecodeState of the running batch
        self._slots = []  # per state row: (unit, row), a live row's latest token not fed yet; None: free

    # --- any thread ----------------------------------------------------------------------------

    def submit(self, job):
        """Queue a request (QueueFull when max_queue requests already wait)."""
        check_fits(job.items, self.limits)
        with self._lock:
            if self._waiting_jobs >= self.limits.max_queue:
                raise QueueFull("the server is at capacity: {} requests are already waiting for a decode slot; "
                                "retry later".format(self._waiting_jobs))
            self._waiting.extend(_Unit(job, i) for i in range(len(job.items)))
            self._waiting_jobs += 1
            self.stats.requests += 1
            self._wakeup.notify()

    def cancel(self, job):
        """The request's client is gone: stop spending steps on it; it is answered `Cancelled` at
        the next step boundary."""
        with self._lock:
            if not job.cancelled:
                job.cancelled = True
                self.stats.cancelled += 1
            self._wakeup.notify()

    @property
    def busy(self):
        return bool(self._slots) or bool(self._waiting)

    # --- the scheduling thread -----------------------------------------------------------------

    def iterate(self, wait=0.0):
        """One round (see the module docstring); idle, it waits up to `wait` s for work."""
        with self._lock:
            if not self._slots and not self._waiting and wait:
                self._wakeup.wait(wait)
        self._end_rows()
        admitted = self._admit()
        if admitted and admitted[0].params.uses_beams:
            self._beam_search(admitted[0])
        elif admitted:
            self._join(admitted)
        if self._slots:
            self._step()

    def _end_rows(self):
        """Rows of cancelled requests and of requests past their deadline stop here."""
        now = self.clock()
        for _, unit, row in self._live():
            job = unit.job
            if job.cancelled:
                row.end("cancelled")
                job._fail(Cancelled())
            elif job.deadline is not None and now >= job.deadline:
                row.end(TIME_LIMIT)
                self._unit_progress(unit, expired=True)

    def _admit(self):
        """Waiting prompts that fit, first come first served; [beam unit] alone when one is at the
        head of the queue and nothing runs."""
        admitted = []
        with self._lock:
            live = self._live()
            while self._waiting:
                unit = self._waiting[0]
                if self._drop_if_gone(unit):
                    continue
                if unit.params.uses_beams:
                    if not live and not admitted:
                        admitted.append(self._pop())
                    break
                if not self._fits(live, admitted + [unit]):
                    break
                admitted.append(self._pop())
        return admitted

    def _pop(self):
        """The head of the queue; its request leaves the waiting count with its first prompt."""
        unit = self._waiting.popleft()
        if not unit.job.started:
            unit.job.started = True
            self._waiting_jobs -= 1
        return unit

    def _drop_if_gone(self, unit):
        """A waiting prompt of a cancelled request, or past its deadline, leaves the queue."""
        job = unit.job
        expired = job.deadline is not None and self.clock() >= job.deadline
        if not (job.cancelled or expired):
            return False
        self._pop()
        if job.cancelled:
            job._fail(Cancelled())
            return True
        self.stats.expired += 1
        if not any(r is not None for r in job.results) and not self._running(job):
            job._fail(QueueTimeout("the request waited {:.1f} s for a decode slot and reached its deadline "
                                   "before it started; retry later".format(self.clock() - job.submitted)))
        else:  # part of it ran: this prompt gets no tokens, ended for time
            unit.rows = []
            job._finish_item(unit.index, self._empty_sequences(unit))
        return True

    def _live(self):
        """[(state row, unit, row)] of the rows still decoding."""
        return [(slot, entry[0], entry[1]) for slot, entry in enumerate(self._slots)
                if entry is not None and not entry[1].finished]

    def _running(self, job):
        return any(unit.job is job for _, unit, _ in self._live())

    def _fits(self, live, units):
        """Whether `units` can join the live rows within the limits (in a rebuilt batch if need be)."""
        rows = len(live) + sum(u.params.rows for u in units)
        if rows > self.limits.max_rows:
            return False
        span, future = self._span_and_future(live)
        width = max(len(u.item.ids) for u in units)
        future = max([future] + [u.params.max_new_tokens for u in units])
        return rows * capacity_for(max(span, width), future) <= self.limits.max_cache_tokens

    def _span_and_future(self, live):
        """Slots the live rows use once compacted, and the most tokens any of them may still feed."""
        if not live:
            return 0, 0
        start = int(self._state.pads[[slot for slot, _, _ in live]].min())
        return self._state.length - start, max(u.params.max_new_tokens - len(row.tokens) for _, u, row in live)

    def _batch_for(self, rows, capacity):
        """The smallest of batch_sizes() that holds `rows`, so that rows to spare make rebuilds rare
        (idle rows cost memory, not steps); exactly `rows` where that batch's cache would exceed
        max_cache_tokens."""
        size = next(size for size in batch_sizes(self.limits.max_rows) if size >= rows)
        return size if size * capacity <= self.limits.max_cache_tokens else rows

    def _join(self, units):
        """Prefill the newcomers, let them choose a first token, and put them in free rows."""
        rows = []
        for unit in units:
            unit.seed, unit.rows = self.generator.rows_of(unit.item)
            rows += [(unit, row) for row in unit.rows]
        prefill = self.engine.prefill([row.prompt_ids for _, row in rows])
        for i, (unit, row) in enumerate(rows):
            _advance(unit, row, prefill.logits[i])
        newcomers = [(i, unit, row) for i, (unit, row) in enumerate(rows) if not row.finished]
        if newcomers:
            if self._live():
                self.stats.joins += 1
            targets = self._free_rows(newcomers, prefill.width)
            self.engine.insert(self._state, targets, prefill, [i for i, _, _ in newcomers])
            for target, (_, unit, row) in zip(targets, newcomers):
                self._slots[target] = (unit, row)
        for unit in units:
            self._unit_progress(unit)
        log.debug("admitted %d prompt(s), %d row(s); %d live in a batch of %d", len(units), len(rows),
                  len(self._live()), len(self._slots))

    def _free_rows(self, newcomers, width):
        """State rows for the newcomers: the free rows after the live ones in the running batch
        when it has enough rows and slots, else those of a rebuilt one."""
        self._compact()
        live = self._live()
        _, future = self._span_and_future(live)
        future = max([future] + [u.params.max_new_tokens - len(row.tokens) for _, u, row in newcomers])
        state = self._state
        if state is not None and len(self._slots) - len(live) >= len(newcomers) and \
                max(state.length, width) + future <= state.capacity:
            return list(range(len(live), len(live) + len(newcomers)))
        self._rebuild(live, len(live) + len(newcomers), width, future)
        return list(range(len(live), len(live) + len(newcomers)))

    def _rebuild(self, live, rows, width=0, future=None):
        """The running batch rebuilt for `rows` rows: the live rows first (compacted), the rest free."""
        span, live_future = self._span_and_future(live)
        future = live_future if future is None else future
        capacity = capacity_for(max(span, width), future)
        batch = self._batch_for(rows, capacity)
        # One bucket of slots to spare, when memory allows: the shared slot moves on one slot per
        # step, so without them the next long newcomer would need another rebuild (a copy of the
        # whole cache) at once; with them, only after CACHE_BUCKET steps at the earliest.
        if batch * (capacity + CACHE_BUCKET) <= self.limits.max_cache_tokens:
            capacity += CACHE_BUCKET
        if self._state is None:
            self._state = self.engine.allocate(batch, capacity)
        else:
            self.stats.rebuilds += 1
            old, self._state = self._state, self.engine.resize(self._state, [slot for slot, _, _ in live], batch,
                                                               capacity)
            self.engine.retire(old)
        self._slots = [(unit, row) for _, unit, row in live] + [None] * (batch - len(live))

    def _step(self):
        """Feed every live row's pending token (the live rows first, see `_compact`); they choose
        their next one."""
        self._compact()
        live = self._live()
        if not live:
            self._idle()
            return
        rows = min(step_size(len(live), self.limits.max_rows), len(self._slots))
        tokens = [self.filler] * rows  # rows past the live ones (few: see step_sizes) are computed idle
        for slot, _, row in live:
            tokens[slot] = row.tokens[-1][0]
        self._count_step(live)
        logits = self.engine.step(self._state, tokens)  # (rows, V)
        # A prompt's rows draw from one RNG in row order (Generator.rows_of); compaction may have
        # put them in other slots, so they choose in their own order, not the slots'.
        for slot, unit, row in sorted(live, key=lambda entry: entry[1].rows.index(entry[2])):
            _advance(unit, row, logits[slot])
            if row.finished:
                self._slots[slot] = None
                self._unit_progress(unit)
        if not self._live():
            self._idle()

    def _idle(self):
        """No row left: the batch's cache goes back to the engine for the next one."""
        if self._state is not None:
            self.engine.retire(self._state)
        self._state, self._slots = None, []

    def _compact(self):
        """The live rows first: each free row among the first n (n live rows) takes a live row
        from after them (one row's cache copied), so that a step can compute the first n only."""
        live = [slot for slot, _, _ in self._live()]
        n, taken = len(live), set(live)
        holes = [slot for slot in range(n) if slot not in taken]
        for hole, source in zip(holes, [slot for slot in live if slot >= n]):
            self.engine.move_row(self._state, source, hole)
            self._slots[hole] = self._slots[source]
        self._slots[n:] = [None] * (len(self._slots) - n)

    def _count_step(self, live):
        self.stats.steps += 1
        self.stats.row_steps += len(live)
        self.stats.max_rows = max(self.stats.max_rows, len(live))
        if len({id(unit.job) for _, unit, _ in live}) > 1:
            self.stats.shared_steps += 1

    def _unit_progress(self, unit, expired=False):
        """Answer a prompt (and maybe its request) once all its rows finished."""
        if unit.done() and unit.job.results[unit.index] is None and not unit.job.cancelled:
            if expired:
                self.stats.expired += 1
            unit.job._finish_item(unit.index, [self.generator.sequence(row, unit.seed, unit.params)
                                               for row in unit.rows])

    def _beam_search(self, unit):
        job = unit.job

        def out_of_time():  # asked at every step: a cancel or the deadline ends the search there
            return job.cancelled or (job.deadline is not None and self.clock() >= job.deadline)

        started = time.time()
        sequences = self.generator.beam_search(unit.item, out_of_time)
        log.debug("beam search of %d beams took %.2f s", unit.params.num_beams, time.time() - started)
        if job.cancelled:
            job._fail(Cancelled())  # answered, so that its worker is free
        else:
            job._finish_item(unit.index, sequences)

    def _empty_sequences(self, unit):
        seed, rows = self.generator.rows_of(unit.item)
        for row in rows:
            row.end(TIME_LIMIT)
        return [self.generator.sequence(row, seed, unit.params) for row in rows]

    def fail_all(self, error):
        """Answer every waiting and running request with `error` (the engine is going away)."""
        with self._lock:
            jobs = {id(u.job): u.job for u in self._waiting}
            jobs.update({id(u.job): u.job for _, u, _ in self._live()})
            self._waiting.clear()
            self._waiting_jobs = 0
        self._state, self._slots = None, []
        for job in jobs.values():
            job._fail(error)


def _advance(unit, row, logits):
    """The row chooses its next token from `logits`; a streaming request hears of it."""
    row.advance(logits)
    if unit.job.on_token is not None:
        unit.job.on_token(unit.index, unit.rows.index(row), row.tokens[-1], row.finished)


def step_sizes(max_rows):
    """The row counts steps run with, each its own step graph: every count up to 16 (a step costs
    what its rows cost, so it runs exactly the live rows), then multiples of 8 and max_rows (a few
    idle rows rather than a graph per count: each holds its own buffers)."""
    exact = list(range(1, min(max_rows, 16) + 1))
    return exact + [size for size in range(24, max_rows, 8)] + ([max_rows] if max_rows > 16 else [])


def step_size(rows, max_rows):
    """The smallest of step_sizes(max_rows) that holds `rows` live rows."""
    return next((size for size in step_sizes(max_rows) if size >= rows), rows)


def batch_sizes(max_rows):
    """The batch sizes the running batch takes: powers of two, and max_rows."""
    sizes, size = [], 1
    while size < max_rows:
        sizes.append(size)
        size *= 2
    return sizes + [max_rows]


def check_fits(items, limits):
    """RequestTooCostly (400) for a prepared prompt that could never be admitted under `limits`."""
    for item in items:
        rows, need = item.params.rows, capacity_for(len(item.ids), item.params.max_new_tokens)
        if rows > limits.max_rows:
            raise _too_big("needs {} decode rows; the engine runs at most {} per step "
                           "(KOGPT2_MAX_BATCH_ROWS)".format(rows, limits.max_rows))
        if rows * need > limits.max_cache_tokens:
            raise _too_big("needs {} cache slots ({} rows x {}); the engine holds at most {} "
                           "(KOGPT2_MAX_CACHE_TOKENS)".format(rows * need, rows, need, limits.max_cache_tokens))


def _too_big(message):
    return RequestTooCostly("a prompt of this request " + message)
