"""Our engine against transformers (PyTorch) and ONNX Runtime, with the same weights, interleaved.

The peers are built from the weights our engine loaded (benchmarks/peer_models.py): a
transformers GPT2LMHeadModel holding them, and that model exported to ONNX with past
key/values. Before anything is timed, each peer's logits for the prompt and for 4 cached
steps, at batch 1 and at --batch, must match ours (max |diff| <= 1e-4 x the largest logit,
same argmax everywhere); the run stops otherwise.

Variants, each decoding exactly --new-tokens greedy tokens from the same --prompt-tokens
prompt, at batch 1 and at --batch, all run in turn once per repeat after a warm-up:

  engine        this package's Generator (prefill once, fixed-size KV cache), float32
  engine_bf16   the same with its weights held in bfloat16 (--dtype bfloat16); its logits
                are compared with the float32 engine's and reported, not required to match
  engine_int8   the same with int8 weights (--dtype int8, our kernels); logits reported the same way
  transformers  GPT2LMHeadModel.generate(use_cache=True, do_sample=False), sdpa attention
  onnxruntime   the exported graph after ONNX Runtime's GPT-2 fusions, prompt then one token
                per step, presents fed back as pasts through IOBinding
  onnxruntime_int8  that graph through ONNX Runtime's own int8 (quantize_dynamic); its logits
                are compared with our float32 engine's and reported, not required to match
  floor         every weight matrix of one step through the 1x1 convolution decode steps use (GEMV chain);
                floor_bf16 the same over the bfloat16 weights
  bandwidth     one step's weight bytes read by NumPy in as many threads as cores;
                bandwidth_bf16 the bfloat16 weights' (half the bytes)

Each framework runs in its own process (see benchmarks/workers.py for why). Threads: our
engine uses every core (kogpt2_serving.model.device); torch and ONNX Runtime get the same budget,
--peer-threads (2).
Usage: python benchmarks/peers.py [--quick] [--batch 8] [--new-tokens 64] [--output benchmarks/results/peers.json]
"""
import contextlib
import hashlib
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import peer_models  # noqa: E402
from workers import Worker  # noqa: E402

PEERS = ("transformers", "onnxruntime", "onnxruntime_int8")
INT8_PEERS = ("onnxruntime_int8",)  # their logits are reported against ours, not required to match
ENGINES = ("engine", "engine_bf16", "engine_int8")
FLOORED = ("engine", "engine_bf16")  # engines with a GEMV floor and read-bandwidth variant of their own weights
CHECK_STEPS = 4


def add_peer_options(p):
    p.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset of %(default)s, or ''")
    p.add_argument("--ort-graph", choices=("fused", "exported"), default="fused",
                   help="ONNX Runtime runs the exported graph after onnxruntime.transformers' GPT-2 fusions "
                        "(fused) or as exported; both get ORT's session-level optimizations (default: %(default)s)")
    p.add_argument("--peer-threads", type=int, default=common.PEER_THREADS,
                   help="torch / ONNX Runtime intra-op threads (default: %(default)s)")
    p.add_argument("--no-bfloat16", dest="bfloat16", action="store_false",
                   help="skip the engine_bf16 variant (bfloat16 weights)")


def check_peer_options(p, args):
    args.peers = [x for x in args.peers.split(",") if x]
    unknown = set(args.peers) - set(PEERS)
    if unknown:
        p.error("unknown peer(s) %s; choose from %s" % (", ".join(sorted(unknown)), ", ".join(PEERS)))


def parse_args():
    p = common.parser(__doc__, new_tokens=64, batch=8, repeats=5)
    add_peer_options(p)
    p.add_argument("--no-int8", dest="int8", action="store_false", help="skip the engine_int8 variant (int8 weights)")
    p.epilog += "\n--quick: 8 new tokens, 1 repeat"
    args = p.parse_args()
    check_peer_options(p, args)
    if args.quick:
        args.new_tokens, args.repeats = 8, 1
    return args


class Fleet:
    """The engine worker and one worker per peer, over the engine's weights."""

    def __init__(self, args, stack):
        self.args = args
        self.engine = stack.enter_context(Worker("engine", model_dir=args.model_dir, device=args.device,
                                                 threads=args.threads))
        self.engines = {"engine": self.engine}
        self.skipped = {}  # variant -> why this CPU or MXNet cannot run it
        problem = self.engine.info["capabilities"]["bfloat16_problem"]
        if args.bfloat16 and problem:
            reason = "bfloat16 products cannot run here: " + problem
            self.skipped = dict.fromkeys(("engine_bf16", "floor_bf16", "bandwidth_bf16"), reason)
            print("skipping engine_bf16, floor_bf16, bandwidth_bf16: " + reason, file=sys.stderr)
        elif args.bfloat16:
            self.engines["engine_bf16"] = stack.enter_context(Worker(
                "engine", model_dir=args.model_dir, device=args.device, threads=args.threads, dtype="bfloat16"))
        problem = self.engine.info["kernels_problem"]
        if getattr(args, "int8", False) and problem:
            self.skipped["engine_int8"] = "our int8 kernels cannot run here: " + problem
            print("skipping engine_int8: " + self.skipped["engine_int8"], file=sys.stderr)
        elif getattr(args, "int8", False):
            self.engines["engine_int8"] = stack.enter_context(Worker(
                "engine", model_dir=args.model_dir, device=args.device, threads=args.threads, dtype="int8"))
        self.peers = {}
        if not args.peers:
            return
        key = cache_key(self.engine.info["params_file"])
        prune_cache(key)
        onnx_path = os.path.join(common.HERE, ".cache", "onnx", "gpt2-past-%s.onnx" % key)
        torch_worker = None
        if "transformers" in args.peers or not os.path.exists(onnx_path):  # the export needs torch
            hf_dir = self.engine.call("write_hf_dir", os.path.join(common.HERE, ".cache", "hf-%s" % key))
            torch_worker = stack.enter_context(Worker("transformers", hf_dir=hf_dir, threads=args.peer_threads))
        if "transformers" in args.peers:
            self.peers["transformers"] = torch_worker
        if not os.path.exists(onnx_path) and {"onnxruntime", "onnxruntime_int8"} & set(args.peers):
            os.makedirs(os.path.dirname(onnx_path), exist_ok=True)
            torch_worker.call("export_onnx", onnx_path)
        cfg = self.engine.info["config"]
        for name in ("onnxruntime", "onnxruntime_int8"):
            if name in args.peers:
                self.peers[name] = stack.enter_context(Worker(
                    "onnxruntime", onnx_path=onnx_path, n_layer=cfg["n_layer"], n_head=cfg["n_head"],
                    n_embd=cfg["n_embd"], threads=args.peer_threads, fuse=args.ort_graph == "fused",
                    int8=name in INT8_PEERS))
        if torch_worker is not None and "transformers" not in args.peers:
            torch_worker.close()  # it only exported the graph

    def prompt_ids(self):
        return self.engine.call("prompt", self.args.prompt_tokens)[1]

    def check(self, batch, steps=CHECK_STEPS):
        """Logits agreement at this batch size; raises when a peer disagrees."""
        prompt = [self.prompt_ids()] * batch
        ours, fed = self.engine.call("logits", prompt, steps)
        results = {name: peer_models.agreement(ours, worker.call("logits", prompt, fed))
                   for name, worker in self.peers.items() if name not in INT8_PEERS}
        return peer_models.check_agreement(results)

    def reduced_precision_agreement(self, batch, steps=CHECK_STEPS):
        """How far the logits of the engines with bfloat16 or int8 weights and of the int8 peers
        are from the float32 engine's, feeding every one the same tokens (reported only)."""
        prompt = [self.prompt_ids()] * batch
        ours, fed = self.engine.call("logits", prompt, steps)
        found = {name: peer_models.agreement(ours, worker.call("logits", prompt, steps, fed)[0])
                 for name, worker in self.engines.items() if name != "engine"}
        found.update({name: peer_models.agreement(ours, worker.call("logits", prompt, fed))
                      for name, worker in self.peers.items() if name in INT8_PEERS})
        return found

    def generate_variant(self, name, batch, n):
        """Prepare `name`_b`batch` in its worker; returns the runner."""
        worker = self.engines.get(name) or self.peers[name]
        key = "%s_b%d@%d" % (name, batch, n)
        worker.call("prepare", key, {"kind": "generate", "batch": batch, "n": n, "prompt_tokens":
                                     self.args.prompt_tokens, "prompt_ids": self.prompt_ids()})
        return worker.runner(key)

    def engine_variant(self, key, spec, engine="engine"):
        spec = dict(spec, name=key, prompt_tokens=self.args.prompt_tokens)
        self.engines[engine].call("prepare", key, spec)
        return self.engines[engine].runner(key)

    def thread_settings(self):
        peers = {}
        if "transformers" in self.peers:
            peers["torch_threads"] = self.peers["transformers"].info["torch_threads"]
        if "onnxruntime" in self.peers:
            info = self.peers["onnxruntime"].info
            peers["onnxruntime_intra_op_threads"] = info["intra_op_threads"]
            peers["onnxruntime_inter_op_threads"] = info["inter_op_threads"]
        settings = common.thread_settings(self.engine.info["threads"], **peers)
        settings["env"] = self.engine.info["env"]  # what the engine's process ran with
        settings["processes"] = "one per framework (benchmarks/workers.py)"
        return settings

    def versions(self):
        found = {"mxnet": self.engine.info["mxnet"]}
        if "transformers" in self.peers:
            found.update({k: self.peers["transformers"].info[k] for k in ("torch", "transformers")})
        if "onnxruntime" in self.peers:
            found["onnxruntime"] = self.peers["onnxruntime"].info["onnxruntime"]
        return found

    def peer_details(self):
        details = {}
        if "transformers" in self.peers:
            details["transformers"] = {"attn_implementation": self.peers["transformers"].info["attn_implementation"]}
        if "onnxruntime" in self.peers:
            details["onnxruntime"] = self.peers["onnxruntime"].info["graph"]
        return details


def cache_key(params_file):
    """Exports depend on the weights and on the torch/transformers versions that made them."""
    from importlib import metadata

    stat = os.stat(params_file)
    parts = [os.path.abspath(params_file), str(stat.st_size), str(stat.st_mtime)]
    parts += [metadata.version(d) for d in ("torch", "transformers", "onnxruntime", "onnx")]
    return hashlib.md5("|".join(parts).encode()).hexdigest()[:12]


def prune_cache(key):
    """Exports are ~0.5-0.7 GB each: keep only the current weights' and versions' ones."""
    import glob
    import shutil

    cache = os.path.join(common.HERE, ".cache")
    for path in glob.glob(os.path.join(cache, "hf-*")) + glob.glob(os.path.join(cache, "onnx", "gpt2-past-*")):
        if key not in os.path.basename(path):
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)


def main():
    args = parse_args()
    common.note_busy_machine()
    with contextlib.ExitStack() as stack:
        fleet = Fleet(args, stack)
        batches = sorted({1, args.batch})
        agreement = {"b%d" % b: fleet.check(b) for b in batches} if fleet.peers else {}
        print_agreement(agreement)
        reduced = {"b%d" % b: fleet.reduced_precision_agreement(b) for b in batches}
        print_agreement(reduced, "the float32 engine")
        n, names = args.new_tokens, list(fleet.engines) + list(fleet.peers)
        variants = {}
        for batch in batches:
            for name in names:
                variants["%s_b%d" % (name, batch)] = fleet.generate_variant(name, batch, n)
            for engine in [e for e in fleet.engines if e in FLOORED]:
                floor = "%s_b%d" % (floor_of(engine), batch)
                variants[floor] = fleet.engine_variant(floor, {"kind": "floor", "batch": batch, "steps": n}, engine)
        for engine in [e for e in fleet.engines if e in FLOORED]:
            bandwidth = bandwidth_of(engine)
            variants[bandwidth] = fleet.engine_variant(bandwidth, {"kind": "bandwidth", "steps": n}, engine)
        seconds = common.interleaved(variants, args.repeats)
        bandwidth = fleet.engine.call("record", "bandwidth")
        result = summarize(seconds, args, names, bandwidth["bytes_per_step"])
        result.update(agreement=agreement, reduced_precision_agreement=reduced, peer_details=fleet.peer_details(),
                      model={"step_weight_bytes": fleet.engine.info["step_weight_bytes"],
                             "config": fleet.engine.info["config"], "random_weights": not args.model_dir},
                      bandwidth_threads=bandwidth["threads"])
        print_table(result, args, fleet.engine.info["threads"])
        if args.output:
            common.write_result(args.output, "peers", args, fleet.thread_settings(), result,
                                versions=fleet.versions(), skipped=fleet.skipped)


def floor_of(name):
    """The GEMV-floor variant over the same weights as `name`."""
    return "floor_bf16" if name == "engine_bf16" else "floor"


def bandwidth_of(name):
    return "bandwidth_bf16" if name in ("engine_bf16", "floor_bf16") else "bandwidth"


def summarize(seconds, args, names, read_bytes):
    n, b = args.new_tokens, args.batch
    batches = sorted({1, b})
    ms = {k: [s * 1000 / n for s in v] for k, v in seconds.items()}  # per step = per token of each row
    med = {k: common.median(v) for k, v in ms.items()}
    floors_bf16 = ["floor_bf16"] if "engine_bf16" in names else []
    tokens_per_s = {k: int(k.rsplit("_b", 1)[1]) * 1000 / v for k, v in med.items() if re.search(r"_b\d+$", k)}
    result = {"new_tokens": n, "batches": batches, "variants": names, "ms_per_token_median": med,
              "samples_ms_per_token": ms, "tokens_per_s_median": tokens_per_s,
              "read_bandwidth_gb_s": read_bytes / (med["bandwidth"] / 1000) / 1e9,
              "x_gemv_floor": {"%s_b%d" % (name, batch): med["%s_b%d" % (name, batch)] /
                               med["%s_b%d" % (floor_of(name), batch)] for batch in batches for name in names},
              "x_bandwidth_floor": {"%s_b%d" % (name, batch): med["%s_b%d" % (name, batch)] / med[bandwidth_of(name)]
                                    for batch in batches for name in names + ["floor"] + floors_bf16}}
    engines = [e for e in ENGINES if e in names]
    peers = [p for p in names if p not in engines and p not in INT8_PEERS]
    if peers or set(INT8_PEERS) & set(names):
        result["ratios"], result["targets"] = {}, {}
        result["targets"].update(issue17_targets(med, tokens_per_s, names, b))
    if peers:
        fastest_b1 = min(peers, key=lambda p: med["%s_b1" % p])
        fastest_bb = max(peers, key=lambda p: tokens_per_s["%s_b%d" % (p, b)])
        for e in engines:
            result["ratios"].update({"%s_b1 ms / %s_b1 ms" % (e, p): med["%s_b1" % e] / med["%s_b1" % p]
                                     for p in peers})
            result["ratios"].update({"%s_b%d tok/s / %s_b%d tok/s" % (e, b, p, b):
                                     tokens_per_s["%s_b%d" % (e, b)] / tokens_per_s["%s_b%d" % (p, b)] for p in peers})
            weights = {"engine": "float32", "engine_bf16": "bfloat16 weights", "engine_int8": "int8 weights"}[e]
            result["targets"]["b1 ms/token <= fastest peer's (%s)" % weights] = {
                "peer": fastest_b1, "variant": e, "engine": med["%s_b1" % e], "peer_value": med["%s_b1" % fastest_b1],
                "met": med["%s_b1" % e] <= med["%s_b1" % fastest_b1]}
            result["targets"]["b%d tokens/s >= fastest peer's (%s)" % (b, weights)] = {
                "peer": fastest_bb, "variant": e, "engine": tokens_per_s["%s_b%d" % (e, b)],
                "peer_value": tokens_per_s["%s_b%d" % (fastest_bb, b)],
                "met": tokens_per_s["%s_b%d" % (e, b)] >= tokens_per_s["%s_b%d" % (fastest_bb, b)]}
    return result


def issue17_targets(med, tokens_per_s, names, b):
    """Issue 17's targets, where both sides ran: int8 at batch 1 <= 0.6x ONNX Runtime float32's
    ms/token and <= ONNX Runtime int8's; int8 at batch b >= ONNX Runtime int8's tokens/s; float32
    at batch 1 within 1.2x of ONNX Runtime float32's."""
    wanted = [("engine_int8 b1 ms/token <= 0.6x onnxruntime's", "engine_int8", "onnxruntime", 1, 0.6),
              ("engine_int8 b1 ms/token <= onnxruntime_int8's", "engine_int8", "onnxruntime_int8", 1, 1.0),
              ("engine_int8 b%d tokens/s >= onnxruntime_int8's" % b, "engine_int8", "onnxruntime_int8", b, None),
              ("engine b1 ms/token <= 1.2x onnxruntime's", "engine", "onnxruntime", 1, 1.2)]
    targets = {}
    for label, ours, peer, batch, factor in wanted:
        if ours not in names or peer not in names:
            continue
        key, peer_key = "%s_b%d" % (ours, batch), "%s_b%d" % (peer, batch)
        if factor is None:
            engine, peer_value = tokens_per_s[key], tokens_per_s[peer_key]
            met = engine >= peer_value
        else:
            engine, peer_value = med[key], med[peer_key]
            met = engine <= factor * peer_value
        targets[label] = {"peer": peer, "variant": ours, "engine": engine, "peer_value": peer_value,
                          "ratio": engine / peer_value, "met": met}
    return targets


def print_agreement(agreement, against="our engine"):
    print("\nlogits agreement with %s before timing (prompt + %d cached steps)" % (against, CHECK_STEPS))
    for batch, peers in agreement.items():
        for peer, r in peers.items():
            print("  %-4s %-16s max |diff| %.2e of max |logit| %.2f, same argmax: %s (%.1f%%)" % (
                batch, peer, r["max_abs_diff"], r["logit_scale"], r["same_argmax"], 100 * r["argmax_agreement"]))


def print_table(result, args, threads):
    med, tps = result["ms_per_token_median"], result["tokens_per_s_median"]
    print("\nKoGPT2-size greedy decode, %d-token prompt, %d new tokens, MXNet %d thread(s), peers %d thread(s), "
          "%d repeat(s), median" % (args.prompt_tokens, args.new_tokens, threads, args.peer_threads, args.repeats))
    print("%-20s %10s %10s %10s" % ("variant", "ms/token", "tokens/s", "x floor"))
    for batch in result["batches"]:
        for name in result["variants"] + ["floor"] + (["floor_bf16"] if "engine_bf16" in result["variants"] else []):
            key = "%s_b%d" % (name, batch)
            floor = med["%s_b%d" % ("floor" if name.startswith("floor") else floor_of(name), batch)]
            print("%-20s %10.2f %10.1f %10.2f" % (key, med[key], tps[key], med[key] / floor))
    print("%-20s %10.2f   (%.1f GB/s read)" % ("bandwidth floor", med["bandwidth"], result["read_bandwidth_gb_s"]))
    if "bandwidth_bf16" in med:
        print("%-20s %10.2f   (bfloat16 weights: half the bytes)" % ("bandwidth floor bf16", med["bandwidth_bf16"]))
    for name, value in result.get("ratios", {}).items():
        print("  %-42s %6.2fx" % (name, value))
    for name, t in result.get("targets", {}).items():
        print("  target %s (%s): %s" % (name, t["peer"], "met" if t["met"] else "NOT met"))


if __name__ == "__main__":
    main()
