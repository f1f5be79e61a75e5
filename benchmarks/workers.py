"""One process per framework, driven in turn by the benchmark script: interleaved, not entangled.

MXNet and torch share the system libgomp here. Once torch has run one OpenMP-parallel op on
the Python thread, our engine decodes about 2x slower in that process for as long as it
lives (measured: 24 ms -> 46 ms/token at batch 1; ONNX Runtime's own thread pool does not do
this). A server never hosts both, so each framework gets its own process, as it would in
production: the script sends "run variant X" to one worker at a time and the worker times
the run itself. While one runs, the others wait on a pipe.

Workers ("backends"):
  engine        our engine, the walkthrough loop, the GEMV floor and the bandwidth read (MXNet)
  transformers  GPT2LMHeadModel with our weights (torch), and the ONNX export
  onnxruntime   the exported graph (no torch, no MXNet in that process)
"""
import multiprocessing
import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))


class WorkerError(RuntimeError):
    pass


class Worker:
    """The script's handle on one backend process."""

    def __init__(self, backend, **options):
        context = multiprocessing.get_context("spawn")
        self.backend = backend
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, backend, options), daemon=True,
                                        name="bench-%s" % backend)
        self._process.start()
        child.close()
        self.info = self._receive()  # what the backend reports once ready (versions, threads, ...)

    def call(self, method, *args):
        self._conn.send((method, args))
        return self._receive()

    def runner(self, name):
        """A callable for common.interleaved: runs the prepared variant, returns its seconds."""
        return lambda: self.call("run", name)

    def close(self):
        if self._process.is_alive():
            try:
                self._conn.send(("stop", ()))
            except (BrokenPipeError, OSError):
                pass
            self._process.join(30)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)

    def _receive(self):
        try:
            ok, value = self._conn.recv()
        except EOFError:
            raise WorkerError("%s worker died (exit code %s)" % (self.backend, self._process.exitcode))
        if not ok:
            raise WorkerError("%s worker failed:\n%s" % (self.backend, value))
        return value

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _serve(conn, backend, options):
    sys.path.insert(0, HERE)
    try:
        handler = BACKENDS[backend](**options)
        conn.send((True, handler.info()))
    except BaseException:
        conn.send((False, traceback.format_exc()))
        return
    while True:
        method, args = conn.recv()
        if method == "stop":
            return
        try:
            conn.send((True, getattr(handler, method)(*args)))
        except BaseException:
            conn.send((False, traceback.format_exc()))


class Backend:
    """Variants are prepared by name (a spec dict), then run by name; run returns seconds."""

    def __init__(self):
        self.variants = {}

    def prepare(self, name, spec):
        self.variants[name] = self.build(spec)

    def run(self, name):
        started = time.perf_counter()
        self.variants[name]()
        return time.perf_counter() - started


class EngineBackend(Backend):
    def __init__(self, model_dir=None, device="cpu", threads=None, dtype="float32"):
        super().__init__()
        import common

        from kogpt2_serving.model.device import configure_threads

        self.threads = configure_threads(override=threads)  # before MXNet is imported
        from kogpt2_serving.generation.generator import Generator
        from kogpt2_serving.files.loader import load_model

        self.common = common
        self.loaded = load_model(common.model_dir_or_cached(model_dir), device=device, dtype=dtype)
        self.generator = Generator(self.loaded)
        self.records = {}

    def info(self):
        import mxnet

        from kogpt2_serving.model.device import capabilities

        c = self.loaded.config
        env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MXNET_CPU_PARALLEL_SIZE", "KOGPT2_THREADS",
                                              "DNNL_MAX_CPU_ISA")}
        from kogpt2_serving import kernels

        return {"threads": self.threads, "env": env, "mxnet": mxnet.__version__, "kernels_problem": kernels.problem(),
                "capabilities": capabilities().as_dict(), "step_weight_bytes":
                self.common.step_bytes(self.loaded), "params_file": self.loaded.files.params,
                "config": {"n_layer": c.n_layer, "n_head": c.n_head, "n_embd": c.n_embd, "vocab_size": c.vocab_size}}

    def prompt(self, length):
        text = self.common.prompt_of(self.loaded.tokenizer, length)
        return text, self.loaded.tokenizer.encode_prompt(text)

    def write_hf_dir(self, directory):
        import peer_models

        return peer_models.write_hf_dir(self.loaded.config, peer_models.canonical_params(self.loaded), directory)

    def logits(self, prompt_ids, steps, given=None):
        import peer_models

        return peer_models.engine_logits(self.loaded, prompt_ids, steps, given)

    def greedy_tokens(self, prompt_tokens, n):
        text, _ = self.prompt(prompt_tokens)
        return self.common.generate(self.generator, [text], n)[0]

    def build(self, spec):
        c, kind = self.common, spec["kind"]
        n = spec.get("n")
        if kind == "generate":
            text, _ = self.prompt(spec["prompt_tokens"])
            return lambda: c.generate(self.generator, [text] * spec["batch"], n, spec.get("extra"))
        if kind == "walkthrough":
            text, _ = self.prompt(spec["prompt_tokens"])
            return lambda: c.walkthrough_loop(self.loaded, text, n)
        if kind == "walkthrough_steps":
            return self._walkthrough_steps(spec)
        if kind == "floor":
            return c.floor_step(self.loaded, batch=spec["batch"], steps=spec["steps"])
        if kind == "bandwidth":
            run, read = c.read_bandwidth_run(c.step_bytes(self.loaded), c.cpu_cores(), spec["steps"])
            self.records[spec["name"]] = {"bytes_per_step": read, "threads": c.cpu_cores()}
            return run
        raise ValueError("unknown variant kind %r" % kind)

    def _walkthrough_steps(self, spec):
        """Only the chosen steps of the walkthrough loop, each on the text the loop holds there
        (the prompt plus `tokens`, appended as the loop appends pieces)."""
        text, _ = self.prompt(spec["prompt_tokens"])
        texts = []
        for token in spec["tokens"]:
            texts.append(text)
            text += self.loaded.tokenizer.id_to_piece(int(token)).replace("\u2581", " ")
        chosen = [texts[i] for i in spec["steps"]]
        self.records[spec["name"]] = {"steps": spec["steps"], "context_tokens": [
            len(self.loaded.tokenizer.encode_prompt(t)) for t in chosen]}

        def run():
            for t in chosen:
                self.common.walkthrough_step(self.loaded, t)
        return run

    def record(self, name):
        return self.records.get(name)


class TransformersBackend(Backend):
    def __init__(self, hf_dir, threads=2):
        super().__init__()
        import torch

        import peer_models

        torch.set_num_threads(threads)
        self.torch, self.peer_models = torch, peer_models
        kwargs, state = peer_models.read_hf_dir(hf_dir)
        self.model = peer_models.build_hf_model(kwargs, state)
        self.generate = peer_models.HFGreedy(self.model)

    def info(self):
        import transformers

        return {"torch": self.torch.__version__, "transformers": transformers.__version__,
                "torch_threads": self.torch.get_num_threads(),
                "attn_implementation": self.model.config._attn_implementation}

    def logits(self, prompt_ids, fed):
        return self.peer_models.hf_logits(self.model, prompt_ids, fed)

    def export_onnx(self, path):
        if not os.path.exists(path):
            self.peer_models.export_onnx(self.model, path)
        return path

    def build(self, spec):
        if spec["kind"] != "generate":
            raise ValueError("transformers runs only 'generate' variants, not %r" % spec["kind"])
        ids = [spec["prompt_ids"]] * spec["batch"]
        return lambda: self.generate(ids, spec["n"])


class OrtBackend(Backend):
    def __init__(self, onnx_path, n_layer, n_head, n_embd, threads=2, fuse=True, int8=False):
        super().__init__()
        import peer_models

        self.peer_models = peer_models
        self.graph = {"exported": os.path.basename(onnx_path), "optimizer": None}
        if fuse:
            onnx_path, fused_ops = peer_models.fused_onnx(onnx_path, n_head, n_embd)
            self.graph.update(optimizer="onnxruntime.transformers.optimizer, model_type gpt2", fused_ops=fused_ops)
        if int8:  # quantized after the fusions, as ONNX Runtime's transformer docs order them
            onnx_path = peer_models.quantized_onnx(onnx_path)
            self.graph.update(quantization="onnxruntime.quantization.quantize_dynamic, weight_type QInt8")
        self.threads = threads
        self.session = peer_models.ort_session(onnx_path, threads)
        self.decoder = peer_models.OrtGreedy(self.session, n_layer, n_head, n_embd // n_head)

    def info(self):
        import onnxruntime

        return {"onnxruntime": onnxruntime.__version__, "intra_op_threads": self.threads, "inter_op_threads": 1,
                "graph": self.graph}

    def logits(self, prompt_ids, fed):
        return self.peer_models.ort_logits(self.decoder, prompt_ids, fed)

    def build(self, spec):
        if spec["kind"] != "generate":
            raise ValueError("onnxruntime runs only 'generate' variants, not %r" % spec["kind"])
        ids = [spec["prompt_ids"]] * spec["batch"]
        return lambda: self.decoder(ids, spec["n"])


BACKENDS = {"engine": EngineBackend, "transformers": TransformersBackend, "onnxruntime": OrtBackend}
