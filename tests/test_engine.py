"""KV-cache decoding against full recompute; batched prompts against single ones."""
import numpy as np
import pytest

from kogpt2_serving.errors import PromptTooLong
from kogpt2_serving.generation.params import parse_parameters

PROMPTS = ["대한민국은", "아기 공룡 둘리는 희동이와", "서울에서 부산까지 기차로 3시간 20분이 걸린다!", "학생들은"]


def greedy_full_recompute(engine, ids, steps):
    """What the 2020 handler did: the whole sequence through the model for every token."""
    ids, out = list(ids), []
    for _ in range(steps):
        token = int(np.argmax(engine.full_logits([ids])[0, -1]))
        out.append(token)
        ids.append(token)
    return out


def greedy_cached(engine, prompts, steps):
    state, logits = engine.start(prompts, steps)
    out = [[] for _ in prompts]
    for step in range(steps):
        tokens = logits.argmax(-1)
        for row, token in enumerate(tokens):
            out[row].append(int(token))
        if step < steps - 1:
            logits = engine.step(state, tokens)
    return out


def test_cached_equals_full_recompute(tiny_model):
    engine, tok = tiny_model.engine, tiny_model.tokenizer
    for prompt in PROMPTS:
        ids = tok.encode_prompt(prompt)
        assert greedy_cached(engine, [ids], 40) == [greedy_full_recompute(engine, ids, 40)]


def test_cached_logits_track_full_recompute(tiny_model):
    engine = tiny_model.engine
    ids = tiny_model.tokenizer.encode_prompt(PROMPTS[1])
    state, logits = engine.start([ids], 20)
    for token in [5, 17, 200, 3, 42]:
        ids = ids + [token]
        logits = engine.step(state, [token])
        assert np.abs(logits[0] - engine.full_logits([ids])[0, -1]).max() < 1e-5


def test_batched_prompts_equal_single_prompts(tiny_model):
    engine, tok = tiny_model.engine, tiny_model.tokenizer
    prompts = [tok.encode_prompt(p) for p in PROMPTS]
    assert len({len(p) for p in prompts}) > 2  # really different lengths: padding is exercised
    batched = greedy_cached(engine, prompts, 30)
    single = [greedy_cached(engine, [p], 30)[0] for p in prompts]
    assert batched == single


def test_batched_logits_equal_single_logits(tiny_model):
    engine, tok = tiny_model.engine, tiny_model.tokenizer
    prompts = [tok.encode_prompt(p) for p in PROMPTS]
    _, batched = engine.start(prompts, 4)
    for row, p in enumerate(prompts):
        _, single = engine.start([p], 4)
        assert np.abs(batched[row] - single[0]).max() < 1e-5


def test_generator_batch_equals_single(generator):
    params = parse_parameters({"max_new_tokens": 25})
    batched = generator.generate(PROMPTS, params)
    for prompt, seqs in zip(PROMPTS, batched):
        assert generator.generate([prompt], params)[0] == seqs


def test_reorder_duplicates_rows(tiny_model):
    engine = tiny_model.engine
    ids = tiny_model.tokenizer.encode_prompt(PROMPTS[0])
    state, logits = engine.start([ids], 10)
    state.reorder([0, 0, 0])
    stepped = engine.step(state, [7, 8, 7])
    # Rows 0 and 2 are the same computation, but a kernel may treat rows of one product
    # differently (blocks and tails), so equal to float32 rounding; row 1 must differ far more.
    assert np.abs(stepped[0] - stepped[2]).max() < 1e-5 and np.abs(stepped[0] - stepped[1]).max() > 1e-2
    _, ref = engine.start([ids + [8]], 4)
    assert np.abs(stepped[1] - ref[0]).max() < 1e-5


def test_prompt_plus_new_tokens_beyond_positions(tiny_model):
    engine = tiny_model.engine  # n_positions 96
    with pytest.raises(PromptTooLong) as e:
        engine.start([[1] * 90], 10)
    assert e.value.status == 413
    assert str(e.value) == "prompt of 90 tokens + max_new_tokens 10 = 100 exceeds the model's 96 positions"
    engine.start([[1] * 90], 6)  # exactly 96 fits


def test_generator_rejects_long_prompt_with_both_numbers(generator):
    with pytest.raises(PromptTooLong, match=r"prompt of \d+ tokens \+ max_new_tokens 64 = \d+ exceeds the model's 96"):
        generator.generate(["대한민국은 민주공화국이다. " * 20], parse_parameters({}))


def test_full_length_generation_fills_every_position(generator, tiny_model):
    ids = tiny_model.tokenizer.encode_prompt("대한민국은")
    params = parse_parameters({"max_new_tokens": 96 - len(ids)})
    (seq,), = generator.generate(["대한민국은"], params)
    assert seq.generated_tokens <= 96 - len(ids)


def test_step_graphs_per_batch_size_are_bounded_and_rebuilt_alike(tiny_model, monkeypatch):
    """One step graph per batch size (the attention fixes B); the oldest is dropped past the
    limit and a rebuilt one gives the same logits."""
    from kogpt2_serving.model import engine as engine_module

    engine = tiny_model.engine
    monkeypatch.setattr(engine_module, "MAX_STEP_GRAPHS", 2)
    monkeypatch.setattr(engine, "_steps", {})  # the shared fixture's graphs from earlier tests
    ids = [tiny_model.tokenizer.encode_prompt(p) for p in PROMPTS[:3]]

    def two_steps(prompts):
        state, logits = engine.start(prompts, 4)
        return engine.step(state, logits.argmax(-1))

    first = two_steps(ids[:1])
    for batch in (2, 3):
        two_steps(ids[:batch])
    assert len(engine._steps) == 2 and 1 not in engine._steps
    again = two_steps(ids[:1])
    assert np.abs(first - again).max() < 1e-6


def test_steps_past_the_convolution_limit_use_fullyconnected_alike(tiny_model):
    """Up to MAX_CONV_ROWS rows a step's products are convolutions over the step kernels;
    past it they are FullyConnected over the weights. Either way a row's logits are its own."""
    from kogpt2_serving.model.network import MAX_CONV_ROWS

    engine, tok = tiny_model.engine, tiny_model.tokenizer
    prompts = [tok.encode_prompt(PROMPTS[i % len(PROMPTS)]) + [5 + i] for i in range(MAX_CONV_ROWS + 1)]
    state, logits = engine.start(prompts, 4)
    wide = engine.step(state, logits.argmax(-1))  # (MAX_CONV_ROWS + 1, V)
    for row in (0, 1, MAX_CONV_ROWS):
        state, logits = engine.start([prompts[row]], 4)
        assert np.abs(engine.step(state, logits.argmax(-1))[0] - wide[row]).max() < 1e-5


def load_with_steps(model_dir, monkeypatch, f32_kernel):
    """The model with its float32 steps through oneDNN's convolutions or through our kernel,
    whichever this CPU would choose (files.loader.f32_kernel_steps)."""
    from kogpt2_serving import kernels
    from kogpt2_serving.files import loader

    if f32_kernel and kernels.problem():
        pytest.skip(kernels.problem())
    monkeypatch.setattr(loader, "f32_kernel_steps", lambda ctx, dtype: f32_kernel)
    return loader.load_model(model_dir, device="cpu")


@pytest.mark.parametrize("f32_kernel", [False, True], ids=["conv-steps", "kernel-steps"])
def test_step_kernels_are_copies_of_the_weights_or_absent_and_not_saved(tiny_model_dir, tmp_path, monkeypatch,
                                                                         f32_kernel):
    import mxnet as mx

    from kogpt2_serving.files.checkpoint import save_params

    loaded = load_with_steps(tiny_model_dir, monkeypatch, f32_kernel)
    model = loaded.engine.model
    attention, ffn = model.layers[0].attention, model.layers[0].ffn
    for linear in (attention._multi_head_qkv_proj, attention._out_proj, ffn._hidden_map, model._logits_proj):
        assert linear.f32_steps == f32_kernel
        if f32_kernel:
            assert linear.step_weight._data is None  # our kernel reads `weight` itself: no copy
            continue
        weight, kernel = linear.weight.data().asnumpy(), linear.step_weight.data().asnumpy()
        assert kernel.shape == weight.shape + (1,) and np.array_equal(kernel[:, :, 0], weight)
    ids = [[5, 17, 33, 9], [8, 2]]
    state, logits = loaded.engine.start(ids, 3)
    full = loaded.engine.full_logits([ids[0] + [7]])[0][-1]
    assert np.abs(loaded.engine.step(state, [7, 7])[0] - full).max() < 1e-4  # steps agree with the full pass
    save_params(model, str(tmp_path / "saved.params"))
    saved = mx.nd.load(str(tmp_path / "saved.params"))
    assert not [k for k in saved if "step" in k]
    assert set(saved) == set(model.named_weights())


@pytest.fixture(scope="module")
def head64_model_dir(tmp_path_factory):
    """Head size 64, as KoGPT2's: the attention kernel's own code path for it."""
    from kogpt2_serving.testing import make_test_model

    return make_test_model(str(tmp_path_factory.mktemp("head64")), n_embd=128, n_head=2, n_layer=2,
                           n_positions=96, seed=3)


def load_with_attention(model_dir, monkeypatch, kernel):
    """The model with its steps' attention through oneDNN's grouped convolutions (every slot of
    the cache) or through kogpt2_attention_step (each row's own slots)."""
    from kogpt2_serving import kernels
    from kogpt2_serving.files import loader
    from kogpt2_serving.model.network import SelfAttention, blocks

    if kernel and kernels.problem():
        pytest.skip(kernels.problem())
    monkeypatch.setattr(loader, "kernels_run", lambda ctx: kernel)
    loaded = loader.load_model(model_dir, device="cpu")
    assert all(block.kernel_step == kernel for block in blocks(loaded.engine.model, SelfAttention))
    return loaded


@pytest.mark.parametrize("kernel", [False, True], ids=["conv-attention", "kernel-attention"])
def test_rows_joining_a_running_batch_attend_to_their_own_slots(head64_model_dir, monkeypatch, kernel):
    """Continuous batching's cache: a row decoding, a longer prompt joining it later (the shared
    length jumps, leaving the first row a gap of masked slots), free rows with no slot at all,
    and capacity left unused. Each row's logits are those of its own sequence's full pass."""
    engine = load_with_attention(head64_model_dir, monkeypatch, kernel).engine
    first, second = [5, 17, 33, 9, 2], [8, 2, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49]
    state = engine.allocate(4, 64)
    prefill = engine.prefill([first])
    engine.insert(state, [0], prefill)
    fed = {0: list(first)}
    for token in (7, 11):
        engine.step(state, [token, 0, 0, 0])
        fed[0].append(token)
    engine.insert(state, [2], engine.prefill([second]))  # 12 slots: the length jumps from 7 to 12
    fed[2] = list(second)
    assert state.length == 12
    for token in (13, 21, 34):
        logits = engine.step(state, [token, 0, token + 1, 0])
        fed[0].append(token)
        fed[2].append(token + 1)
        for row, ids in fed.items():
            full = engine.full_logits([ids])[0][-1]
            assert np.abs(logits[row] - full).max() < 1e-4 * np.abs(full).max()


def test_graph_call_runs_the_built_graph_with_the_blocks_parameters():
    """compat.GraphCall: the first call goes through Gluon (which builds the graph), later ones
    straight to the graph with the parameters' arrays; the outputs are the block's own."""
    import mxnet as mx
    from mxnet import gluon

    from kogpt2_serving.model.compat import GraphCall

    class TwoOutputs(gluon.HybridBlock):
        def __init__(self):
            super().__init__()
            self.dense = gluon.nn.Dense(3, in_units=4)

        def hybrid_forward(self, F, x, y):
            return self.dense(x) + y, F.sum(x, axis=1)

    block = TwoOutputs()
    block.initialize(mx.init.Normal(1.0))
    block.hybridize(static_alloc=True, static_shape=True)
    call = GraphCall(block)
    x, y = mx.nd.array(np.arange(8).reshape(2, 4)), mx.nd.ones((2, 3))
    first = [a.asnumpy() for a in call(x, y)]
    block.forward = None  # Gluon's own call is not taken again
    second = call(x, y)
    assert isinstance(second, tuple) and len(second) == 2
    expected = block.dense.weight.data().asnumpy()
    np.testing.assert_allclose(first[0], x.asnumpy() @ expected.T + block.dense.bias.data().asnumpy() + 1, rtol=1e-5)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b.asnumpy())


def test_bound_graph_reads_its_arguments_as_they_are_when_called():
    """compat.BoundGraph: the arguments are fixed at binding, their contents are not: a call
    after an in-place write sees it, and gives what the unbound graph gives for the same arrays."""
    import mxnet as mx
    from mxnet import gluon

    from kogpt2_serving.model.compat import GraphCall

    class Affine(gluon.HybridBlock):
        def __init__(self):
            super().__init__()
            self.dense = gluon.nn.Dense(3, in_units=4)

        def hybrid_forward(self, F, x, y):
            return self.dense(x) * y

    block = Affine()
    block.initialize(mx.init.Normal(1.0))
    block.hybridize(static_alloc=True, static_shape=True)
    call = GraphCall(block)
    x, y = mx.nd.array(np.arange(8).reshape(2, 4)), mx.nd.ones((2, 3))
    call(x, y)
    bound = call.bind(x, y)
    np.testing.assert_array_equal(bound().asnumpy(), call(x, y).asnumpy())
    x[:] = np.arange(8, 16).reshape(2, 4)  # in place: the bound graph reads the new values
    y[:] = 2
    weight, bias = block.dense.weight.data().asnumpy(), block.dense.bias.data().asnumpy()
    np.testing.assert_allclose(bound().asnumpy(), (x.asnumpy() @ weight.T + bias) * 2, rtol=1e-5)
    np.testing.assert_array_equal(bound().asnumpy(), call(x, y).asnumpy())


def test_steps_bind_the_graph_to_a_states_arrays_and_give_the_same_logits(tiny_model, monkeypatch):
    """After BIND_AFTER steps over the same arrays the step graph runs bound to them
    (compat.BoundGraph), bit for bit what the unbound graph gives; a reorder, which replaces the
    state's arrays, drops the binding, and the next steps bind again."""
    from kogpt2_serving.model import engine as engine_module
    from kogpt2_serving.model.compat import BoundGraph

    engine = tiny_model.engine
    prompts = [tiny_model.tokenizer.encode_prompt(p) for p in PROMPTS[:2]]
    tokens = [[5, 6], [17, 18], [200, 201], [3, 4], [42, 43], [7, 8]]

    def run(bind_after):
        monkeypatch.setattr(engine_module, "BIND_AFTER", bind_after)
        state, _ = engine.start(prompts, 10)
        out, bound = [], []
        for i, step_tokens in enumerate(tokens):
            if i == 4:
                state.reorder([1, 0])
                assert not state.bound_steps
            out.append(engine.step(state, step_tokens))
            binding = state.bound_steps[2]
            bound.append(isinstance(binding.graph, BoundGraph))
        return out, bound

    unbound, never = run(10 ** 9)
    assert not any(never)
    logits, bound = run(2)
    assert bound == [False, False, True, True, False, False]  # steps 3-4 bound; after the reorder, anew
    for a, b in zip(unbound, logits):
        np.testing.assert_array_equal(a, b)


def test_short_and_long_prefills_both_match_the_full_pass(tiny_model, monkeypatch):
    """Prefills of at most FEW_PREFILL_TOKENS tokens run their products through our float32 kernel,
    longer ones through oneDNN's FullyConnected: each graph's logits, and the cache it leaves (seen
    through the next step), are those of the full pass."""
    from kogpt2_serving.model import engine as engine_module

    engine = tiny_model.engine
    if engine._prefill_few is None:
        pytest.skip("float32 products do not run through our kernel here: one prefill graph")
    used = []

    class Spy:
        def __init__(self, graph, name):
            self.graph, self.name = graph, name

        @property
        def built(self):
            return getattr(self.graph, "built", False)

        def __call__(self, *inputs):
            used.append(self.name)
            return self.graph(*inputs)

    monkeypatch.setattr(engine, "_prefill", Spy(engine._prefill, "fullyconnected"))
    monkeypatch.setattr(engine, "_prefill_few", Spy(engine._prefill_few, "kernel"))
    rng = np.random.RandomState(3)
    limit = engine_module.FEW_PREFILL_TOKENS
    short = [list(rng.randint(3, 500, size=n)) for n in (limit // 2, limit // 4)]  # 2 x 32 slots: 64
    long = [list(rng.randint(3, 500, size=n)) for n in (limit // 2 + 1, 9)]  # 2 x 33 slots: 66
    for prompts, graph in ((short, "kernel"), (long, "fullyconnected")):
        state, logits = engine.start(prompts, 4)
        assert used[-1] == graph
        after = engine.step(state, [7, 8])
        for row, ids in enumerate(prompts):
            full = engine.full_logits([ids + [7 + row]])[0]  # (T + 1, V)
            assert np.abs(logits[row] - full[-2]).max() < 1e-4 * np.abs(full[-2]).max()
            assert np.abs(after[row] - full[-1]).max() < 1e-4 * np.abs(full[-1]).max()
