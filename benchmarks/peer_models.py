"""The peers, built from OUR weights: transformers GPT2LMHeadModel (PyTorch) and ONNX Runtime.

- :func:`hf_state_dict` maps our canonical parameters onto HuggingFace GPT-2 keys with the
  inverse of :func:`kogpt2_serving.files.hf_checkpoint.name_map` (Conv1D stores (in, out), the
  transpose of Gluon's Dense), so the peer runs exactly the weights our engine runs.
- :func:`export_onnx` traces the transformers model with past key/values into an ONNX graph:
  inputs `input_ids`, `attention_mask` (over past + new tokens), `position_ids` and
  `past_key_i` / `past_value_i` (B, H, P, D); outputs the last position's `logits` and
  `present_key_i` / `present_value_i` (B, H, P+T, D). One graph serves the prompt (P = 0)
  and every later step (T = 1), as optimum's "with past" export does.
- :func:`engine_logits`, :func:`hf_logits`, :func:`ort_logits` and :func:`agreement` check
  that the peers' logits match our engine's, for the prompt and for cached steps, before
  anything is timed (each in the process that holds the model; compared by the coordinator).
- :class:`HFGreedy` and :class:`OrtGreedy` decode exactly n tokens greedily, like our engine's
  `min_new_tokens == max_new_tokens`.

Imports of torch, transformers and onnxruntime are local: the report and the tests of the
mapping must import this module without them.
"""
import os

import numpy as np

# ---- same weights ----

def hf_config_kwargs(config):
    """Our GPT2Config -> transformers GPT2Config keyword arguments for the same network."""
    return dict(vocab_size=config.vocab_size, n_positions=config.n_positions, n_embd=config.n_embd,
                n_layer=config.n_layer, n_head=config.n_head, n_inner=config.n_inner,
                layer_norm_epsilon=config.layer_norm_epsilon, activation_function=config.activation_function,
                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True,
                bos_token_id=None, eos_token_id=None, pad_token_id=None)


def hf_state_dict(params, n_layer):
    """Canonical {name: NDArray or ndarray} -> {HF key: float32 ndarray} (GPT2LMHeadModel keys,
    LM head tied, so not stored). Inverse of hf_checkpoint.read_hf_params."""
    from kogpt2_serving.files.hf_checkpoint import name_map

    state = {}
    for canonical, hf, conv1d in name_map(n_layer):
        value = params[canonical]
        value = value.asnumpy() if hasattr(value, "asnumpy") else np.asarray(value)
        state["transformer." + hf] = np.ascontiguousarray(value.T if conv1d else value, dtype=np.float32)
    unused = sorted(set(params) - {c for c, _, _ in name_map(n_layer)} - {"_logits_proj.weight"})
    if unused:
        raise ValueError("parameters with no HF counterpart: {}".format(", ".join(unused[:5])))
    return state


def canonical_params(loaded):
    """The engine's own parameters, as loaded (what it decodes with)."""
    return {n: p.data() for n, p in loaded.engine.model.named_weights().items()}


def write_hf_dir(config, params, directory):
    """Our weights as a HuggingFace GPT-2 directory (config.json + model.safetensors), which
    the transformers process reads without MXNet. Written whole, then renamed into place."""
    import json

    from safetensors.numpy import save_file

    if os.path.isdir(directory):
        return directory
    tmp = directory + ".tmp%d" % os.getpid()
    os.makedirs(tmp, exist_ok=True)
    save_file(hf_state_dict(params, config.n_layer), os.path.join(tmp, "model.safetensors"))
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(dict(hf_config_kwargs(config), model_type="gpt2", architectures=["GPT2LMHeadModel"]), f, indent=2)
    try:
        os.rename(tmp, directory)
    except OSError:  # made meanwhile by another process
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def read_hf_dir(directory):
    """(transformers config kwargs, {HF key: ndarray}) of a directory write_hf_dir made."""
    import json

    from safetensors.numpy import load_file

    with open(os.path.join(directory, "config.json")) as f:
        kwargs = json.load(f)
    for key in ("model_type", "architectures"):
        kwargs.pop(key, None)
    return kwargs, load_file(os.path.join(directory, "model.safetensors"))


def build_hf_model(hf_kwargs, state, attn_implementation="sdpa"):
    """A transformers GPT2LMHeadModel (eval, float32, CPU) holding exactly `state`
    ({HF key: ndarray}, as hf_state_dict returns), LM head tied to the embedding."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_config = GPT2Config(**hf_kwargs)
    hf_config._attn_implementation = attn_implementation
    with torch.device("meta"):
        model = GPT2LMHeadModel(hf_config)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ValueError("state dict does not fit GPT2LMHeadModel: missing {}, unexpected {}".format(
            missing[:5], unexpected[:5]))
    model.tie_weights()
    if model.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr():
        raise ValueError("the LM head is not tied to the token embedding")
    _materialize_buffers(model, torch)
    return model.eval()


def _materialize_buffers(model, torch):
    """Buffers created on the meta device (none in GPT-2 today) would fail at run time."""
    for module in model.modules():
        for name, buf in list(module.named_buffers(recurse=False)):
            if buf.is_meta:
                raise ValueError("buffer {} was not loaded".format(name))


# ---- ONNX export with past key/values ----

def step_module(model):
    """A torch module with flat tensor inputs/outputs around the HF model and its cache."""
    import torch
    from transformers import DynamicCache

    n_layer = model.config.n_layer

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, *past):
            cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(n_layer)])
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             cache=cache, use_cache=True, logits_to_keep=1)
            presents = []
            for layer in out.cache.layers:
                presents += [layer.keys, layer.values]
            return (out.logits[:, -1, :],) + tuple(presents)

    return Step().eval()


def io_names(n_layer):
    past = [n for i in range(n_layer) for n in ("past_key_%d" % i, "past_value_%d" % i)]
    present = [n for i in range(n_layer) for n in ("present_key_%d" % i, "present_value_%d" % i)]
    return ["input_ids", "attention_mask", "position_ids"] + past, ["logits"] + present


def export_onnx(model, path, opset=17):
    """Trace the HF model with past into `path` (TorchScript exporter: no onnxscript needed).

    Traced with P=3 past and T=2 new tokens so that no size is a special case; every size is
    a dynamic axis. The eager attention is exported (the sdpa path's mask shortcuts depend on
    the traced values)."""
    import warnings

    import torch

    cfg = model.config
    heads, size = cfg.n_head, cfg.n_embd // cfg.n_head
    batch, past_len, new = 2, 3, 2
    inputs = (torch.zeros((batch, new), dtype=torch.long), torch.ones((batch, past_len + new), dtype=torch.long),
              torch.arange(past_len, past_len + new).repeat(batch, 1))
    past = tuple(torch.zeros((batch, heads, past_len, size)) for _ in range(2 * cfg.n_layer))
    inputs_names, output_names = io_names(cfg.n_layer)
    axes = {"input_ids": {0: "batch", 1: "new"}, "attention_mask": {0: "batch", 1: "total"},
            "position_ids": {0: "batch", 1: "new"}, "logits": {0: "batch"}}
    for name in inputs_names[3:]:
        axes[name] = {0: "batch", 2: "past"}
    for name in output_names[1:]:
        axes[name] = {0: "batch", 2: "total"}
    previous = model.config._attn_implementation
    model.config._attn_implementation = "eager"
    tmp = path + ".tmp"
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(step_module(model), inputs + past, tmp, input_names=inputs_names,
                              output_names=output_names, dynamic_axes=axes, opset_version=opset, dynamo=False)
    finally:
        model.config._attn_implementation = previous
    os.replace(tmp, path)
    return path


def optimize_onnx(path, out, n_head, n_embd):
    """ONNX Runtime's own transformer optimizer for GPT-2 (fused LayerNorm+residual, bias+GELU,
    attention where it recognizes the pattern), saved to `out`. Returns the fused-op counts."""
    from onnxruntime.transformers import optimizer

    model = optimizer.optimize_model(path, model_type="gpt2", num_heads=n_head, hidden_size=n_embd, opt_level=0)
    fused = {k: v for k, v in model.get_fused_operator_statistics().items() if v}
    tmp = out + ".tmp"
    model.save_model_to_file(tmp)
    os.replace(tmp, out)
    return fused


def fused_onnx(path, n_head, n_embd):
    """(path, fused-op counts) of `path` after optimize_onnx, made once beside it."""
    import json

    fused, stats_file = path[:-len(".onnx")] + "-fused.onnx", path[:-len(".onnx")] + "-fused.json"
    if not (os.path.exists(fused) and os.path.exists(stats_file)):
        stats = optimize_onnx(path, fused, n_head, n_embd)
        with open(stats_file, "w") as f:
            json.dump(stats, f)
    with open(stats_file) as f:
        return fused, json.load(f)


def quantized_onnx(path):
    """`path` through ONNX Runtime's own int8 (onnxruntime.quantization.quantize_dynamic with
    its defaults: int8 weights, uint8 activations quantized per step), made once beside it."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = path[:-len(".onnx")] + "-int8.onnx"
    if not os.path.exists(out):
        tmp = out[:-len(".onnx")] + ".tmp.onnx"
        # The fused graph's own operators (com.microsoft domain) have no ONNX shape inference:
        # their outputs are float32, which ORT's quantizer must be told.
        quantize_dynamic(path, tmp, weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        os.replace(tmp, out)
    return out


def ort_session(path, threads, optimized_path=None):
    """An ONNX Runtime CPU session with all graph optimizations and `threads` intra-op threads.
    `optimized_path`: where ORT saves the optimized graph (to see what it fused)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if optimized_path:
        options.optimized_model_filepath = optimized_path
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


# ---- decoding loops ----

class HFGreedy:
    """transformers' own greedy `generate(use_cache=True)`, exactly n new tokens."""

    def __init__(self, model):
        self.model = model

    def __call__(self, prompt_ids, n):
        import torch

        ids = torch.tensor(prompt_ids, dtype=torch.long)
        with torch.inference_mode():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                      do_sample=False, use_cache=True, num_beams=1, pad_token_id=0)
        tokens = out[:, ids.shape[1]:].numpy()
        assert tokens.shape == (len(prompt_ids), n), "transformers generated %s" % (tokens.shape,)
        return tokens.tolist()


class OrtGreedy:
    """Greedy decoding on the exported graph: prompt once (no past), then one token per step,
    presents fed back as the next pasts without leaving ONNX Runtime (IOBinding)."""

    def __init__(self, session, n_layer, n_head, head_size):
        self.session = session
        self.n_layer, self.n_head, self.head_size = n_layer, n_head, head_size
        self.inputs, self.outputs = io_names(n_layer)

    def __call__(self, prompt_ids, n):
        prompt = np.asarray(prompt_ids, dtype=np.int64)  # (B, T): equal lengths, no padding
        batch, length = prompt.shape
        empty = np.zeros((batch, self.n_head, 0, self.head_size), dtype=np.float32)
        pasts = [empty] * (2 * self.n_layer)
        ids, tokens = prompt, []
        for step in range(n):
            total = length + step
            start = total - ids.shape[1]
            logits, pasts = self.run(ids, np.ones((batch, total), dtype=np.int64),
                                     np.broadcast_to(np.arange(start, total), ids.shape).astype(np.int64), pasts)
            ids = logits.argmax(axis=-1).reshape(batch, 1).astype(np.int64)
            tokens.append(ids[:, 0])
        return np.stack(tokens, axis=1).tolist()

    def run(self, ids, mask, positions, pasts):
        """One call -> (logits (B, V) ndarray, presents as OrtValues to pass as the next pasts)."""
        binding = self.session.io_binding()
        for name, value in zip(self.inputs, [ids, mask, np.ascontiguousarray(positions)] + list(pasts)):
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, value)
            else:
                binding.bind_ortvalue_input(name, value)
        for name in self.outputs:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        values = binding.get_outputs()
        return values[0].numpy(), values[1:]


# ---- agreement before timing ----
# Each framework runs in its own process during a benchmark, so the logits are computed where
# the model lives and compared in the coordinating process.

def engine_logits(loaded, prompt_ids, steps, given=None):
    """Our engine's logits for the prompt batch and `steps` cached steps, feeding its own greedy
    tokens or the `given` ones -> (logits list of (B, V), fed tokens list of (B,))."""
    engine = loaded.engine
    state, logits = engine.start([list(p) for p in prompt_ids], steps + 1)
    ours, fed = [logits], []
    for step in range(steps):
        token = logits.argmax(axis=-1) if given is None else np.asarray(given[step])
        fed.append(token)
        logits = engine.step(state, token)
        ours.append(logits)
    return ours, fed


def hf_logits(model, prompt_ids, fed):
    """transformers' logits for the prompt and then each fed token, with its cache."""
    import torch

    ids = torch.tensor(prompt_ids, dtype=torch.long)
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True)
        logits, cache = [out.logits[:, -1].float().numpy()], out.cache
        for token in fed:
            out = model(input_ids=torch.tensor(np.asarray(token), dtype=torch.long).reshape(-1, 1), cache=cache,
                        use_cache=True)
            logits.append(out.logits[:, -1].float().numpy())
            cache = out.cache
    return logits


def ort_logits(decoder, prompt_ids, fed):
    """The exported graph's logits for the prompt and then each fed token, with its pasts."""
    prompt = np.asarray(prompt_ids, dtype=np.int64)
    batch, length = prompt.shape
    empty = np.zeros((batch, decoder.n_head, 0, decoder.head_size), dtype=np.float32)
    logits, pasts = decoder.run(prompt, np.ones((batch, length), dtype=np.int64),
                                np.broadcast_to(np.arange(length), prompt.shape).astype(np.int64),
                                [empty] * (2 * decoder.n_layer))
    out = [logits]
    for step, token in enumerate(fed):
        total = length + step + 1
        logits, pasts = decoder.run(np.asarray(token, dtype=np.int64).reshape(-1, 1),
                                    np.ones((batch, total), dtype=np.int64),
                                    np.full((batch, 1), total - 1, dtype=np.int64), pasts)
        out.append(logits)
    return out


def agreement(ours, theirs):
    """How far a peer's logits are from ours: max |diff|, our largest |logit|, same argmax."""
    if len(ours) != len(theirs):
        raise ValueError("compared {} steps against {}".format(len(ours), len(theirs)))
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(ours, theirs))
    scale = max(float(np.max(np.abs(a))) for a in ours)
    agree = [a.argmax(axis=-1) == b.argmax(axis=-1) for a, b in zip(ours, theirs)]  # per step, (B,) each
    return {"max_abs_diff": diff, "logit_scale": scale, "relative_diff": diff / scale,
            "same_argmax": bool(all(a.all() for a in agree)),
            "argmax_agreement": float(np.mean(np.concatenate([np.ravel(a) for a in agree]))), "steps": len(ours)}


def check_agreement(results, rtol=1e-4):
    """Raise unless every peer's logits are within rtol * (largest |logit|) of ours, with the
    same argmax everywhere (else greedy runs would not decode the same sequence)."""
    bad = ["{}: max |diff| {:.3g} (limit {:.3g}), same argmax {}".format(
        peer, r["max_abs_diff"], rtol * r["logit_scale"], r["same_argmax"])
        for peer, r in sorted(results.items())
        if not (r["max_abs_diff"] <= rtol * r["logit_scale"] and r["same_argmax"])]
    if bad:
        raise AssertionError("peer logits disagree with our engine's: " + "; ".join(bad))
    return results
