"""What every benchmark script shares: options, the model, interleaved timing and the result file.

One module so that every result file has the same header (date, machine, versions, thread
settings, the command that produced it) and every script times its variants the same way:
all variants once per repeat, in turn, after one untimed warm-up each, so that ratios measured
in one run are comparable even when the machine's speed drifts between runs.

Import this module before anything imports MXNet: `setup_threads` must run first (see
:mod:`kogpt2_serving.model.device`).
"""
import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "src"))

import as_cpu  # noqa: E402  (benchmarks/, beside this file)
from kogpt2_serving.testing import free_port  # noqa: E402,F401  (the scripts call common.free_port; no MXNet import)

RESULTS = os.path.join(HERE, "results")
MODEL_CACHE = os.path.join(HERE, ".cache", "kogpt2-size-seed0")
PROMPT = "대한민국은 민주공화국이다. 대한민국의 주권은 국민에게 있고, 모든 권력은 국민으로부터 나온다."
PEER_THREADS = 2  # torch.set_num_threads / onnxruntime intra_op_num_threads: the cores of this machine


# ---- options ----

def parser(doc, new_tokens=64, batch=8, repeats=3):
    """The options every script takes; `doc` is the script's module docstring."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(doc.splitlines()[1:]))
    p.add_argument("--model-dir", help="a model directory (default: random weights at KoGPT2 size, cached in "
                                       "benchmarks/.cache)")
    p.add_argument("--device", default="cpu", help="cpu | gpu | gpu:N for our engine (default: cpu)")
    p.add_argument("--new-tokens", type=int, default=new_tokens, help="tokens generated per run (default: %(default)s)")
    p.add_argument("--prompt-tokens", type=int, default=8, help="prompt length, <s> included (default: %(default)s)")
    p.add_argument("--batch", type=int, default=batch, help="batch size of the throughput rows (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=repeats, help="timed runs of each variant (default: %(default)s)")
    p.add_argument("--threads", type=int, help="MXNet OpenMP threads (default: all cores, see device.py)")
    p.add_argument("--quick", action="store_true", help="a tiny configuration to check the script, not to measure")
    p.add_argument("--output", help="write the results as JSON here (e.g. benchmarks/results/NAME.json)")
    return p


def setup_threads(args):
    """Our engine's threads, chosen before MXNet is imported (the project's own rule)."""
    from kogpt2_serving.model.device import configure_threads

    note_busy_machine()
    return configure_threads(override=args.threads)


# ---- the model ----

def model_dir(args):
    """--model-dir, or the cached random KoGPT2-size model (made once, ~7 s, ~500 MB)."""
    return model_dir_or_cached(args.model_dir)


def model_dir_or_cached(directory=None):
    if directory:
        return directory
    if not os.path.isdir(MODEL_CACHE):
        from kogpt2_serving.testing import make_kogpt2_size_model

        os.makedirs(os.path.dirname(MODEL_CACHE), exist_ok=True)
        work = tempfile.mkdtemp(dir=os.path.dirname(MODEL_CACHE), prefix=".making-")
        make_kogpt2_size_model(work, seed=0)
        try:
            os.rename(work, MODEL_CACHE)  # atomic: a concurrent script either sees it whole or makes its own
        except OSError:
            _remove_tree(work)
    return MODEL_CACHE


def load(args, dtype="float32"):
    """(LoadedModel, Generator) in this process (MXNet is imported here)."""
    from kogpt2_serving.generation.generator import Generator
    from kogpt2_serving.files.loader import load_model

    loaded = load_model(model_dir(args), device=args.device, dtype=dtype)
    return loaded, Generator(loaded)


def skipped_bfloat16(variants):
    """{variant: reason} for bfloat16 variants this process cannot run ({} when it can): the
    result file and the report list them instead of the script dying at load."""
    from kogpt2_serving.model.device import capabilities

    problem = capabilities().bfloat16_problem
    if problem:
        print("skipping %s: bfloat16 products cannot run here: %s" % (", ".join(variants), problem), file=sys.stderr)
    return {v: "bfloat16 products cannot run here: " + problem for v in variants} if problem else {}


def prompt_of(tokenizer, length, text=PROMPT):
    """A prompt text whose ids, <s> included, number exactly `length`."""
    ids = tokenizer.encode(text)[: length - 1]
    prompt = tokenizer.decode(ids)
    if len(tokenizer.encode_prompt(prompt)) != length:
        raise ValueError("cannot make a {}-token prompt from {!r}".format(length, text))
    return prompt


def generate(generator, prompts, n, extra=None):
    """Exactly n new tokens per prompt (min_new_tokens suppresses </s>); returns the id lists."""
    from kogpt2_serving.generation.params import parse_parameters

    params = parse_parameters(dict({"max_new_tokens": n, "min_new_tokens": n}, **(extra or {})))
    results = generator.generate(prompts, params)
    assert all(seq.generated_tokens == n for seqs in results for seq in seqs), "token count"
    return [seqs[0].token_ids for seqs in results]


def walkthrough_step(loaded, text):
    """One step of the 2020 handler's loop: re-tokenize the whole text, run every position
    through the model (logits for all of them, as the original did), append the last argmax's
    piece to the text."""
    import numpy as np

    tok = loaded.tokenizer
    ids = tok.encode_prompt(text)
    logits = loaded.engine.full_logits([ids])  # (1, T, V)
    return text + tok.id_to_piece(int(np.argmax(logits[0, -1]))).replace("\u2581", " ")


def walkthrough_loop(loaded, prompt, n):
    """The 2020 handler's transform_fn loop with its bound added (it had none)."""
    text = prompt
    for _ in range(n):
        text = walkthrough_step(loaded, text)
    return text


def floor_step(loaded, batch, steps):
    """A callable running `steps` GEMV chains over one decode step's weights.

    Every weight matrix of a step (qkv, out, ffn in/out per layer, the tied head once) goes
    through the product a decode step uses (a 1x1 convolution over the engine's step kernels,
    `Linear.step`, or our float32 kernel over the weights where the engine steps through it)
    against `batch` columns, all in one hybridized graph: the memory-bandwidth floor for one
    decode step in this process, with no attention, norms or per-op Python."""
    import mxnet as mx
    from mxnet import gluon

    from kogpt2_serving.model.network import Linear, blocks

    linears = blocks(loaded.engine.model, Linear)  # every layer's, then the tied head
    ours = linears[0].f32_steps
    kernels = [(linear.weight if ours else linear.step_weight).data() for linear in linears]
    shapes = [k.shape for k in kernels]

    def product(F, x, k, shape):
        if ours:
            return F.kogpt2_linear_f32(x, k, no_bias=True)
        return F.amp_cast(F.Convolution(x, k, kernel=(1,), num_filter=shape[0], no_bias=True), dtype="float32")

    class Chain(gluon.HybridBlock):
        def hybrid_forward(self, F, *inputs):
            half = len(inputs) // 2
            sums = [F.sum(product(F, x, k, shape))
                    for x, k, shape in zip(inputs[:half], inputs[half:], shapes)]  # (sum has no bfloat16 kernel)
            return F.add_n(*sums)

    xs = [mx.nd.ones((batch, k.shape[1]) if ours else (1, k.shape[1], batch), ctx=loaded.ctx,
                     dtype=loaded.engine.dtype) for k in kernels]
    if loaded.dtype == "bfloat16":  # bfloat16 weights: the products' inputs are bfloat16 too
        from kogpt2_serving.model.network import BFLOAT16  # (a NumPy dtype MXNet knows without ml_dtypes)

        xs = [mx.nd.amp_cast(x, dtype=BFLOAT16) for x in xs]
    chain = Chain()
    chain.hybridize(static_alloc=True, static_shape=True)

    def run():
        for _ in range(steps):
            chain(*(xs + kernels)).wait_to_read()

    return run


def step_bytes(loaded):
    """Bytes one decode step must read: every weight once (the tied head is the embedding;
    one row of the position table is negligible)."""
    import numpy as np

    params = loaded.engine.model.named_weights()
    return sum(p.data().size * np.dtype(p.data().dtype).itemsize for n, p in params.items()
               if n != "_logits_proj.weight" and n != "_pos_embed.weight")


def read_bandwidth_run(nbytes, threads, steps):
    """A callable reading `nbytes` (one decode step's weights) `steps` times, split over
    `threads` Python threads (NumPy's sum releases the GIL): the bandwidth-only floor, with no
    arithmetic worth the name. Returns (run, nbytes actually read per step)."""
    import threading

    import numpy as np

    parts = np.array_split(np.ones(nbytes // 4, dtype=np.float32), threads)

    def read(part):
        np.add.reduce(part)

    def run():
        for _ in range(steps):
            workers = [threading.Thread(target=read, args=(p,)) for p in parts[1:]]
            for w in workers:
                w.start()
            read(parts[0])
            for w in workers:
                w.join()

    return run, sum(p.nbytes for p in parts)


def cpu_cores():
    from kogpt2_serving.model.device import cpu_count

    return cpu_count()


# ---- timing ----

def interleaved(variants, repeats, warmup=True, progress=True):
    """{name: callable} -> {name: [seconds per run]}: every variant once per repeat, in turn.

    A callable that returns a float reports its own seconds (a worker process times the run
    where it happens); otherwise the call is timed here."""
    if warmup:
        for name, run in variants.items():  # graphs built, caches allocated, nothing timed
            _note(progress, "warm-up %s" % name)
            run()
    samples = {name: [] for name in variants}
    for repeat in range(repeats):
        for name, run in variants.items():
            _note(progress, "repeat %d/%d %s" % (repeat + 1, repeats, name))
            started = time.perf_counter()
            reported = run()
            elapsed = time.perf_counter() - started
            samples[name].append(reported if isinstance(reported, float) else elapsed)
    return samples


def median(values):
    return statistics.median(values)


def _note(enabled, text):
    if enabled:
        print("  " + text, file=sys.stderr, flush=True)


# ---- the result file ----

def busy_processes(seconds=1.0, threshold=10.0):
    """Other processes using the CPU right now: [{"pid", "name", "cpu_percent"}] over `seconds`.
    Results measured beside them are not measurements of this code (OpenMP teams of two MXNet
    processes on 2 cores slow each other down many times over); the report flags them."""
    try:
        import psutil
    except ImportError:
        return None
    mine = {os.getpid()}
    try:
        me = psutil.Process()
        mine.update(p.pid for p in me.children(recursive=True))
        mine.update(p.pid for p in me.parents())
    except psutil.Error:
        pass
    procs = []
    for proc in psutil.process_iter(["pid", "name"]):
        if proc.info["pid"] in mine:
            continue
        try:
            proc.cpu_percent(None)
            procs.append(proc)
        except psutil.Error:
            pass
    time.sleep(seconds)
    busy = []
    for proc in procs:
        try:
            usage = proc.cpu_percent(None)
        except psutil.Error:
            continue
        if usage >= threshold:
            busy.append({"pid": proc.info["pid"], "name": proc.info["name"], "cpu_percent": round(usage, 1)})
    return sorted(busy, key=lambda b: -b["cpu_percent"])


_BUSY_AT_START = []


def note_busy_machine():
    """Call at a script's start: records (and prints) what else is running."""
    busy = busy_processes()
    _BUSY_AT_START[:] = [busy]
    if busy:
        print("warning: other processes are using the CPU (%s): these timings will not be clean" % ", ".join(
            "%s %s%%" % (b["name"], b["cpu_percent"]) for b in busy), file=sys.stderr)
    return busy


def machine():
    info = {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "node": platform.node()}
    try:
        from kogpt2_serving.model.device import cpu_count

        info["cpus_usable"] = cpu_count()
    except ImportError:
        pass
    cpuinfo = _read("/proc/cpuinfo")
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and "cpu_model" not in info:
            info["cpu_model"] = value.strip()
        if key.strip() == "flags" and "cpu_flags" not in info:
            flags = set(value.split())
            info["cpu_flags"] = sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            info["memory_gb"] = round(int(line.split()[1]) / 1024 ** 2, 1)
    return info


# Run in a child process with oneDNN's verbose log on: the capabilities (kogpt2_serving.model.device)
# and, from the log, the oneDNN version and the ISA it dispatches to, which only that log tells.
RUNTIME_PROBE = """
import json
import mxnet as mx
mx.nd.FullyConnected(mx.nd.ones((2, 8)), mx.nd.ones((4, 8)), no_bias=True, num_hidden=4).wait_to_read()
from kogpt2_serving.model.device import capabilities
print("CAPABILITIES " + json.dumps(capabilities().as_dict()))
"""
VERBOSE = {"DNNL_VERBOSE": "1", "MKLDNN_VERBOSE": "1"}  # oneDNN >= 1.1 reads the first, MKL-DNN 1.0 the second
# oneDNN's ISA caps and the CPU flags, in order: a run is of the lower of its CPU's class and its cap.
CLASSES = (("AVX2", "avx2", ("AVX2", "AVX2_VNNI")), ("AVX-512", "avx512f", ("AVX512_CORE",)),
           ("AVX-512 VNNI", "avx512_vnni", ("AVX512_CORE_VNNI",)),
           ("AVX512-BF16", "avx512_bf16", ("AVX512_CORE_BF16", "AVX512_CORE_AMX", "ALL")))


def runtime():
    """What the runs of this script could use: CPU class, flags, oneDNN's ISA cap and the ISA it
    dispatched to, MXNet version and build features, whether bfloat16 products run. Measured in a
    probe process with this process's environment (so with its DNNL_MAX_CPU_ISA), where MXNet
    and oneDNN's log cannot disturb the timed processes."""
    import subprocess

    env = dict(os.environ, **VERBOSE)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.join(REPO, "src"), env.get("PYTHONPATH")]))
    try:
        out = subprocess.run([sys.executable, "-c", RUNTIME_PROBE], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, universal_newlines=True, timeout=300).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return {"error": "runtime probe failed: %s" % e}
    found = parse_runtime(out)
    shown = as_cpu.shown_class()
    if shown and "cpu_class" in found:
        found["shown_class"] = shown
        found["cpu_class"] = "%s, shown on an %s CPU (benchmarks/as_cpu.py: every library sees that class)" % (
            SHOWN_NAMES.get(shown, shown), cpu_class(found["cpu_flags"]))
    return found


# benchmarks/as_cpu.py's classes, as CLASSES names them.
SHOWN_NAMES = {"avx2": "AVX2", "avx512": "AVX-512", "avx512_vnni": "AVX-512 VNNI", "avx512_bf16": "AVX512-BF16"}


def parse_runtime(log):
    """The probe's output (oneDNN verbose lines, then CAPABILITIES {json}) -> the header's dict."""
    found = {"onednn_version": None, "onednn_isa": None}
    for line in log.splitlines():
        if line.startswith("CAPABILITIES "):
            found.update(json.loads(line[len("CAPABILITIES "):]))
        elif line.startswith(("dnnl_verbose,info,", "mkldnn_verbose,info,")):
            info = line.split(",info,", 1)[1]
            if info.startswith(("cpu,isa:", "Detected ISA is ")):
                found["onednn_isa"] = info.split(":", 1)[1] if info.startswith("cpu,isa:") else info[16:]
            elif info.startswith(("oneDNN v", "Intel MKL-DNN v", "DNNL v")) and not found["onednn_version"]:
                found["onednn_version"] = info.split(" (")[0]
    if "cpu_flags" not in found:
        return dict(found, error="runtime probe printed no capabilities: %s" % log.strip()[-500:])
    found["cpu_class"] = cpu_class(found["cpu_flags"], found.get("isa_cap", ""))
    return found


def cpu_class(flags, isa_cap=""):
    """"AVX512-BF16", "AVX2", ... : the highest class the CPU has and oneDNN may use; a capped run
    says so ("AVX2 (DNNL_MAX_CPU_ISA=AVX2 on an AVX512-BF16 CPU)")."""
    if flags is None:
        return "unknown"
    own = [name for name, flag, _ in CLASSES if flag in flags]
    own = own[-1] if own else "pre-AVX2"
    cap = isa_cap.partition("=")[2]
    allowed = [name for name, _, caps in CLASSES if cap in caps]
    if not cap or not allowed and cap not in ("SSE41", "AVX"):  # no cap, or one oneDNN ignores
        return own
    names = ["pre-AVX2"] + [name for name, _, _ in CLASSES]
    capped = allowed[0] if allowed else "pre-AVX2"
    if names.index(capped) >= names.index(own):
        return own
    return "%s (%s on an %s CPU)" % (capped, isa_cap, own)


def installed_versions(*distributions):
    """Installed versions (package metadata: nothing is imported)."""
    from importlib import metadata

    found = {"python": platform.python_version()}
    for name in ("numpy", "mxnet") + tuple(distributions):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def thread_settings(mxnet_threads, **peers):
    settings = {"mxnet_omp_threads": mxnet_threads}
    settings.update(peers)
    settings["env"] = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MXNET_CPU_PARALLEL_SIZE",
                                                      "KOGPT2_THREADS", "MKL_NUM_THREADS")}
    return settings


def command():
    """How this run was started, runnable from the repository root."""
    script = os.path.relpath(os.path.abspath(sys.argv[0]), REPO)
    return " ".join(["python", script] + [_quote(a) for a in sys.argv[1:]])


def _quote(arg):
    return "'%s'" % arg if (not arg or any(c in arg for c in " '\"$;&|")) else arg


def write_result(path, benchmark, args, threads, data, modules=(), versions=None, skipped=None):
    """The JSON every report section reads: header first, then the script's own fields.
    `modules`: distributions whose installed versions to record; `versions`: versions the
    worker processes reported (what actually ran), which win; `skipped`: {variant: reason} for
    the variants this CPU or MXNet cannot run (the report lists them)."""
    found = installed_versions(*modules)
    found.update(versions or {})
    result = {
        "benchmark": benchmark,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "runtime": runtime(),
        "skipped_variants": dict(skipped or {}),
        "versions": found,
        "threads": threads,
        "command": command(),
        "quick": bool(getattr(args, "quick", False)),
        "other_cpu_load": {"at_start": _BUSY_AT_START[0] if _BUSY_AT_START else None, "at_end": busy_processes()},
        "args": {k: v for k, v in vars(args).items() if k != "output"},
    }
    result.update(data)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)
    print("wrote %s" % path)
    return result


def _read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _remove_tree(path):
    import shutil

    shutil.rmtree(path, ignore_errors=True)
