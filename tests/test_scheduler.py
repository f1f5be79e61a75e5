"""Continuous batching: requests that join a running batch get what they get alone."""
import numpy as np
import pytest

from kogpt2_serving.errors import RequestTooCostly
from kogpt2_serving.generation.params import parse_parameters
from kogpt2_serving.generation.scheduler import ContinuousBatcher, Job, QueueFull, QueueTimeout
from kogpt2_serving.settings import EngineLimits

PROMPTS = ["대한민국은", "아기 공룡 둘리는 희동이와", "서울에서 부산까지 기차로 3시간 20분이 걸린다!", "학생들은", "오늘"]


def prepared(generator, prompt, **params):
    return generator.prepare(prompt, parse_parameters(params))


def run_until_idle(batcher, arrivals=(), limit=10000):
    """Iterate the loop; arrivals: {round: [job, ...]} submitted before that round."""
    arrivals = dict(arrivals)
    for round_ in range(limit):
        for job in arrivals.pop(round_, []):
            batcher.submit(job)
        if not batcher.busy and not arrivals:
            return round_
        batcher.iterate()
    raise AssertionError("the loop did not go idle")


def alone(generator, job):
    return [generator.decode([item])[0] for item in job.items]


def assert_same(results, expected):
    """Ids, texts, reasons and seeds exactly; log-probabilities to float rounding (batches of
    other shapes run other kernels)."""
    assert len(results) == len(expected)
    for got, want in zip(results, expected):
        assert [s._replace(tokens=None) for s in got] == [s._replace(tokens=None) for s in want]
        for g, w in zip(got, want):
            assert (g.tokens is None) == (w.tokens is None)
            for a, b in zip(g.tokens or (), w.tokens or ()):
                assert (a.id, a.text) == (b.id, b.text) and a.logprob == pytest.approx(b.logprob, abs=1e-4)


def step_apart_and_together(engine, merged, parts, tokens, steps=10):
    """Step `merged` and each (state, rows) part side by side; the merged rows must see the
    parts' logits (to float rounding) and choose the same greedy tokens every step."""
    a_tokens = tokens
    for _ in range(steps):
        m_logits = engine.step(merged, [t for t in a_tokens])
        apart = [engine.step(state, part_tokens)[rows] for state, rows, part_tokens in parts]
        np.testing.assert_allclose(m_logits[:len(np.concatenate(apart))], np.concatenate(apart), atol=1e-4)
        a_tokens = list(m_logits.argmax(-1))
        offset, next_parts = 0, []
        for (state, rows, part_tokens), logits in zip(parts, apart):
            chosen = list(logits.argmax(-1))
            assert a_tokens[offset:offset + len(rows)] == chosen
            full = [0] * state.batch_size
            for r, t in zip(rows, chosen):
                full[r] = t
            next_parts.append((state, rows, full))
            offset += len(rows)
        parts = next_parts


def test_resize_and_insert_keep_every_rows_logits(tiny_model):
    """Rows of a running batch, compacted into a bigger batch (one row dropped), and newcomers
    inserted beside them (the shorter side left-padded), step exactly as they did apart."""
    engine, tok = tiny_model.engine, tiny_model.tokenizer
    a, a_logits = engine.start([tok.encode_prompt(p) for p in PROMPTS[:3]], 30)
    for _ in range(5):  # a runs ahead: its filled span is longer than b's
        a_logits = engine.step(a, a_logits.argmax(-1))
    b = engine.prefill([tok.encode_prompt(p) for p in PROMPTS[3:]])
    assert a.length > b.width
    merged = engine.resize(a, [0, 2], rows=4, capacity=128)
    engine.insert(merged, [2, 3], b)
    assert merged.batch_size == 4 and merged.capacity == 128
    b_state, _ = engine.start([tok.encode_prompt(p) for p in PROMPTS[3:]], 30)
    a_tokens, b_tokens = list(a_logits.argmax(-1)), list(b.logits.argmax(-1))
    step_apart_and_together(engine, merged, [(a, [0, 2], a_tokens), (b_state, [0, 1], b_tokens)],
                            [a_tokens[0], a_tokens[2]] + b_tokens)


def test_a_newcomer_longer_than_the_batch_makes_its_length_jump(tiny_model):
    engine, tok = tiny_model.engine, tiny_model.tokenizer
    short, long_ = tok.encode_prompt(PROMPTS[4]), tok.encode_prompt(PROMPTS[2])
    a, a_logits = engine.start([short], 20)
    state = engine.resize(a, [0], rows=2, capacity=128)
    before = state.length
    prefill = engine.prefill([long_])
    engine.insert(state, [1], prefill)
    assert before < prefill.width == state.length  # the running row got a gap of masked slots
    alone, _ = engine.start([long_], 20)
    step_apart_and_together(engine, state, [(a, [0], list(a_logits.argmax(-1))),
                                            (alone, [0], list(prefill.logits.argmax(-1)))],
                            [int(a_logits.argmax()), int(prefill.logits.argmax())])


def test_resize_of_the_first_rows_copies_them_alike(tiny_model):
    """The continuous batcher keeps its live rows first, and resize copies such a prefix without
    a gather: the kept rows step on as they did."""
    engine, tok = tiny_model.engine, tiny_model.tokenizer
    a, a_logits = engine.start([tok.encode_prompt(p) for p in PROMPTS[:3]], 30)
    for _ in range(3):
        a_logits = engine.step(a, a_logits.argmax(-1))
    merged = engine.resize(a, [0, 1], rows=4, capacity=128)
    tokens = list(a_logits.argmax(-1))
    step_apart_and_together(engine, merged, [(a, [0, 1], tokens)], tokens[:2] + [0, 0])


def test_a_retired_cache_serves_the_next_batch_unchanged(tiny_model, monkeypatch):
    """retire() hands a finished batch's cache arrays to the next allocate (no zeroing: the old
    values sit in masked slots); a batch on them decodes as one on fresh zeros does."""
    engine, tok = tiny_model.engine, tiny_model.tokenizer
    monkeypatch.setattr(engine, "_spare", [])  # what earlier tests' batchers retired
    old, logits = engine.start([tok.encode_prompt(p) for p in PROMPTS[:4]], 40)
    for _ in range(20):
        logits = engine.step(old, logits.argmax(-1))
    capacity = old.capacity
    engine.retire(old)
    assert len(engine._spare) == 2
    prompts = [tok.encode_prompt(PROMPTS[4]), tok.encode_prompt(PROMPTS[2])]
    reused = engine.allocate(2, capacity)
    assert engine._spare == []  # both arrays came from the retired batch
    assert np.abs(reused.keys.asnumpy()).max() > 0  # and hold its values
    engine.insert(reused, [0, 1], engine.prefill(prompts))
    fresh, fresh_logits = engine.start(prompts, capacity - len(prompts[1]) - 1)
    assert fresh.capacity == capacity
    tokens = list(fresh_logits.argmax(-1))
    for _ in range(5):
        got, want = engine.step(reused, tokens), engine.step(fresh, tokens)
        np.testing.assert_allclose(got, want, atol=1e-5)
        tokens = list(want.argmax(-1))


def test_resize_drops_slots_no_kept_row_uses(tiny_model):
    engine, tok = tiny_model.engine, tiny_model.tokenizer
    long_, short = tok.encode_prompt(PROMPTS[2]), tok.encode_prompt(PROMPTS[4])
    state, _ = engine.start([long_, short], 4)
    kept = engine.resize(state, [1], rows=1, capacity=64)
    assert kept.length == len(short) and list(kept.pads) == [0]


def test_a_step_of_the_first_rows_leaves_the_rest_and_a_moved_row_goes_on(tiny_model):
    """Engine.step over a prefix of rows computes those rows as a whole-batch step does and
    leaves the others; Engine.move_row puts a row elsewhere and it decodes on from there."""
    engine, tok = tiny_model.engine, tiny_model.tokenizer
    prompts = [tok.encode_prompt(p) for p in PROMPTS[:3]]
    whole, logits = engine.start(prompts, 20)
    part, _ = engine.start(prompts, 20)
    tokens = list(logits.argmax(-1))
    first_two = engine.step(part, tokens[:2])
    all_three = engine.step(whole, tokens)
    np.testing.assert_allclose(first_two, all_three[:2], atol=1e-4)
    assert part.positions.asnumpy()[:, 0].tolist() == [len(prompts[0]) + 1, len(prompts[1]) + 1, len(prompts[2])]
    # row 0 finished: row 1 stays, row 2 (still one token behind in `part`) is not used again;
    # in `whole`, row 2 moves into row 0 and the two live rows step on as before
    engine.move_row(whole, 2, 0)
    twin, _ = engine.start(prompts, 20)
    engine.step(twin, tokens)
    tokens = list(all_three.argmax(-1))
    for _ in range(4):
        moved = engine.step(whole, [tokens[2], tokens[1]])  # (2, V): rows 2 and 1 of the twin
        expected = engine.step(twin, tokens)
        np.testing.assert_allclose(moved, expected[[2, 1]], atol=1e-4)
        tokens = list(expected.argmax(-1))
    with pytest.raises(ValueError, match="a step feeds 1 to 3 rows, got 4 tokens"):
        engine.step(twin, tokens + [0])


class StepSpy:
    """The engine, with the row count of every step recorded."""

    def __init__(self, engine):
        self.engine, self.rows = engine, []

    def step(self, state, tokens):
        self.rows.append(len(tokens))
        return self.engine.step(state, tokens)

    def __getattr__(self, name):
        return getattr(self.engine, name)


def mixed_jobs(generator):
    """Greedy, seeded sampling, stop strings, several sequences, different lengths."""
    return [
        Job([prepared(generator, PROMPTS[0], max_new_tokens=30)]),
        Job([prepared(generator, PROMPTS[1], max_new_tokens=12, do_sample=True, seed=7, top_k=20)]),
        Job([prepared(generator, PROMPTS[2], max_new_tokens=25, do_sample=True, seed=3, num_return_sequences=2),
             prepared(generator, PROMPTS[3], max_new_tokens=5, details=True)]),
        Job([prepared(generator, PROMPTS[4], max_new_tokens=40, repetition_penalty=1.3, stop=["다"])]),
        Job([prepared(generator, PROMPTS[3], max_new_tokens=8, do_sample=True, seed=11, temperature=0.7)]),
    ]


def test_requests_that_join_a_running_batch_get_what_they_get_alone(generator):
    jobs = mixed_jobs(generator)
    batcher = ContinuousBatcher(generator)
    batcher.engine = spy = StepSpy(batcher.engine)
    run_until_idle(batcher, {0: jobs[:2], 3: jobs[2:4], 9: jobs[4:]})
    for job in jobs:
        assert job.error is None
        assert_same(job.results, alone(generator, job))
    stats = batcher.stats
    assert stats.joins >= 2  # arrivals at rounds 3 and 9 joined a batch that was running
    assert stats.shared_steps > 0 and stats.max_rows >= 4
    assert stats.row_steps > stats.steps  # steps really carried several rows
    # every step ran exactly its live rows (up to 16, step_sizes has every count): rows that
    # finished left the step at once, however the batch was laid out
    assert len(spy.rows) == stats.steps and sum(spy.rows) == stats.row_steps
    assert len(set(spy.rows)) >= 4


def test_step_sizes_are_exact_up_to_16_then_a_few():
    from kogpt2_serving.generation.scheduler import step_size, step_sizes

    assert step_sizes(3) == [1, 2, 3]
    assert step_sizes(16) == list(range(1, 17))
    assert step_sizes(40) == list(range(1, 17)) + [24, 32, 40]
    assert [step_size(n, 40) for n in (5, 16, 17, 25, 40)] == [5, 16, 24, 32, 40]


def test_a_prompts_rows_draw_in_their_own_order_when_compaction_moves_them(generator):
    """A sampled prompt of 2 sequences shares one RNG, drawn in row order. When the row before
    them finishes, the last one moves into its slot (the live rows stay first) and the two change
    places in the batch: they must still draw in row order, as alone."""
    short = Job([prepared(generator, PROMPTS[0], max_new_tokens=2, min_new_tokens=2)])
    pair = Job([prepared(generator, PROMPTS[5 % len(PROMPTS)], max_new_tokens=30, do_sample=True, seed=7,
                         top_k=20, num_return_sequences=2)])
    batcher = ContinuousBatcher(generator)
    moved = []
    batcher.engine = spy = StepSpy(batcher.engine)
    spy.move_row = lambda state, source, target: (moved.append((source, target)),
                                                  generator.engine.move_row(state, source, target))
    run_until_idle(batcher, {0: [short, pair]})
    assert moved == [(2, 0)]  # the pair's second row took the short one's slot
    assert_same(pair.results, alone(generator, pair))


def test_a_short_request_is_answered_while_a_long_one_decodes(generator):
    done = []
    long_ = Job([prepared(generator, PROMPTS[0], max_new_tokens=60)], on_done=done.append)
    short = Job([prepared(generator, PROMPTS[1], max_new_tokens=3)], on_done=done.append)
    batcher = ContinuousBatcher(generator)
    run_until_idle(batcher, {0: [long_], 2: [short]})
    assert done == [short, long_]
    assert short.finished < long_.finished


def test_limits_bound_rows_per_step_and_cache(generator):
    jobs = mixed_jobs(generator)
    limits = EngineLimits(max_rows=3, max_cache_tokens=3 * 128)
    batcher = ContinuousBatcher(generator, limits)
    run_until_idle(batcher, {0: jobs})
    assert batcher.stats.max_rows <= 3
    for job in jobs:
        assert_same(job.results, alone(generator, job))


def test_a_prompt_that_can_never_fit_is_refused_at_submit(generator):
    batcher = ContinuousBatcher(generator, EngineLimits(max_rows=2, max_cache_tokens=200))
    with pytest.raises(RequestTooCostly, match=r"needs 3 decode rows; the engine runs at most 2 per step"):
        batcher.submit(Job([prepared(generator, PROMPTS[0], num_return_sequences=3, do_sample=True)]))
    with pytest.raises(RequestTooCostly, match=r"needs 256 cache slots \(2 rows x 128\); the engine holds at most 200"):
        batcher.submit(Job([prepared(generator, PROMPTS[0], max_new_tokens=80, num_return_sequences=2,
                                     do_sample=True)]))


def test_queue_full(generator):
    batcher = ContinuousBatcher(generator, EngineLimits(max_queue=2))
    batcher.submit(Job([prepared(generator, PROMPTS[0])]))
    batcher.submit(Job([prepared(generator, PROMPTS[1])]))
    with pytest.raises(QueueFull, match="2 requests are already waiting") as e:
        batcher.submit(Job([prepared(generator, PROMPTS[2])]))
    assert e.value.status == 503
    batcher.iterate()  # both admitted: the queue has room again
    batcher.submit(Job([prepared(generator, PROMPTS[2])]))


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_deadline_ends_a_running_request_with_the_text_so_far(generator):
    clock = Clock()
    batcher = ContinuousBatcher(generator, clock=clock)
    job = Job([prepared(generator, PROMPTS[0], max_new_tokens=50, num_return_sequences=2, do_sample=True, seed=1)],
              deadline=clock.now + 5)
    other = Job([prepared(generator, PROMPTS[1], max_new_tokens=20)])
    batcher.submit(job)
    batcher.submit(other)
    for _ in range(6):
        batcher.iterate()
    clock.now += 10
    run_until_idle(batcher)
    sequences = job.results[0]
    assert [s.finish_reason for s in sequences] == ["time_limit", "time_limit"]
    assert all(0 < s.generated_tokens < 50 for s in sequences)
    full = alone(generator, Job([job.items[0]]))[0]  # the same seed, run to the end
    for cut, whole in zip(sequences, full):
        assert whole.token_ids[:cut.generated_tokens] == cut.token_ids
    assert_same(other.results, alone(generator, other))  # the request beside it is unaffected


def test_a_request_still_waiting_at_its_deadline_gets_503(generator):
    clock = Clock()
    batcher = ContinuousBatcher(generator, EngineLimits(max_rows=1), clock=clock)
    running = Job([prepared(generator, PROMPTS[0], max_new_tokens=20)])
    waiting = Job([prepared(generator, PROMPTS[1], max_new_tokens=5)], deadline=clock.now + 1)
    batcher.submit(running)
    batcher.submit(waiting)
    batcher.iterate()
    clock.now += 2
    run_until_idle(batcher)
    assert isinstance(waiting.error, QueueTimeout) and waiting.error.status == 503
    assert "reached its deadline before it started" in waiting.error.message
    assert_same(running.results, alone(generator, running))


def test_a_cancelled_request_stops_costing_steps(generator):
    done = []
    batcher = ContinuousBatcher(generator)
    gone = Job([prepared(generator, PROMPTS[0], max_new_tokens=60)], on_done=done.append)
    stays = Job([prepared(generator, PROMPTS[1], max_new_tokens=10)], on_done=done.append)
    batcher.submit(gone)
    batcher.submit(stays)
    for _ in range(3):
        batcher.iterate()
    batcher.cancel(gone)
    run_until_idle(batcher)
    assert done == [gone, stays]  # answered at the next step boundary, so its worker is free
    assert gone.error.kind == "cancelled" and gone.results == [None]
    assert_same(stays.results, alone(generator, stays))
    assert batcher.stats.steps < 15  # not the 60 the cancelled request asked for


def test_beam_search_waits_for_the_batch_to_drain_then_runs_alone(generator):
    greedy = Job([prepared(generator, PROMPTS[0], max_new_tokens=10)])
    beams = Job([prepared(generator, PROMPTS[1], max_new_tokens=8, num_beams=3, num_return_sequences=2)])
    after = Job([prepared(generator, PROMPTS[2], max_new_tokens=6)])
    done = []
    for job in (greedy, beams, after):
        job.on_done = done.append
    batcher = ContinuousBatcher(generator)
    run_until_idle(batcher, {0: [greedy], 2: [beams, after]})
    assert done == [greedy, beams, after]  # first come, first served
    for job in (greedy, beams, after):
        assert_same(job.results, alone(generator, job))


def test_a_beam_search_cancelled_while_it_runs_stops_and_is_answered(generator):
    done, steps = [], []
    job = Job([prepared(generator, PROMPTS[1], max_new_tokens=40, num_beams=3)], deadline=1e9,
              on_done=done.append)
    batcher = None

    def clock():  # the search asks once per step (a deadline far away); the client leaves at the third
        steps.append(1)
        if len(steps) == 3:
            batcher.cancel(job)
        return 1000.0

    batcher = ContinuousBatcher(generator, clock=clock)
    batcher.submit(job)
    run_until_idle(batcher)
    assert done == [job] and job.error.kind == "cancelled"  # its worker is not left waiting
    assert len(steps) < 10  # not the 40 steps it asked for


def test_a_streaming_job_hears_of_every_token_as_its_rows_choose_it(generator):
    """on_token reports each row's tokens in order, `last` on the one that ended the row, all
    before the answer; what it reported is exactly the answer's tokens (joined: its text)."""
    heard, answered = [], []
    stream = Job([prepared(generator, "대한민국은", max_new_tokens=9, details=True),
                  prepared(generator, "학생들은", max_new_tokens=5, do_sample=True, seed=3, num_return_sequences=2,
                           details=True)],
                 on_token=lambda *event: heard.append((len(answered),) + event), on_done=answered.append)
    other = Job([prepared(generator, PROMPTS[2], max_new_tokens=12)])  # shares the steps, reports nothing
    batcher = ContinuousBatcher(generator, EngineLimits())
    run_until_idle(batcher, {0: [other], 2: [stream]})
    assert answered == [stream] and stream.error is None
    assert all(before_answer == 0 for before_answer, *_ in heard)
    for item, sequences in enumerate(stream.results):
        for row, sequence in enumerate(sequences):
            events = [(token, last) for _, i, r, token, last in heard if (i, r) == (item, row)]
            assert [tuple(t) for t, _ in events] == [tuple(t) for t in sequence.tokens]
            assert [last for _, last in events] == [False] * (len(events) - 1) + [True]
            assert "".join(t[1] for t, _ in events) == sequence.text
    assert_same(stream.results, alone(generator, stream))
