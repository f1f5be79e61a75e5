"""ms/token against the number of generated tokens: the walkthrough's quadratic loop vs linear decoders.

At each length N (default 16, 64, 256, 768) every variant generates N greedy tokens at --batch
(default 1; the walkthrough loop always decodes one request) from the same 8-token prompt, all (variant, N) pairs in turn once per repeat, after one
untimed run of each variant at the shortest length. ms/token is the run's time over N.

  walkthrough   the 2020 handler's loop (re-tokenize the text, every position through the
                model, append the last argmax): its step t costs O(prompt + t), so N tokens
                cost O(N^2). Up to --walkthrough-full tokens it runs whole. Beyond that a whole
                run would take minutes (about 10 at 768 on 2 cores), so it is SAMPLED: the
                steps at the middles of --walkthrough-samples equal strata of the N steps are
                timed, each on the text the loop would have at that step (the prompt plus our
                engine's greedy tokens, appended as the loop appends them), and their mean is
                the ms/token estimate. The result file says which lengths were sampled and at
                which context lengths; at the largest whole-run length both are measured, as
                a check of the estimate.
  engine        this package's Generator (prefill once, fixed-size KV cache)
  onnxruntime   the peer: the transformers model with our weights exported with past
                key/values (2 intra-op threads), the fastest CPU peer (peers.py); add
                transformers with --peers transformers,onnxruntime
  floor         the GEMV floor of one decode step (MXNet), for reference

Usage: python benchmarks/length_scaling.py [--quick] [--lengths 16,64,256,768] [--output FILE]
"""
import contextlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from peers import Fleet, add_peer_options, check_peer_options  # noqa: E402

FLOOR_STEPS = 64


def parse_args():
    p = common.parser(__doc__, new_tokens=768, batch=1, repeats=2)
    p.add_argument("--lengths", default="16,64,256,768",
                   help="generated-token counts, comma-separated (default: %(default)s); --new-tokens adds one")
    add_peer_options(p)
    p.set_defaults(peers="onnxruntime")  # the fastest CPU peer; --peers transformers,onnxruntime adds the other
    p.set_defaults(bfloat16=False)  # no bfloat16 variant here: no worker for it
    p.add_argument("--walkthrough-full", type=int, default=64,
                   help="run the walkthrough loop whole up to this many tokens (default: %(default)s)")
    p.add_argument("--walkthrough-samples", type=int, default=4,
                   help="steps timed per sampled walkthrough length (default: %(default)s)")
    p.epilog += "\n--quick: lengths 4,16,48, walkthrough whole up to 16, 3 samples, 1 repeat"
    args = p.parse_args()
    check_peer_options(p, args)
    if args.quick:
        args.lengths, args.repeats, args.walkthrough_full, args.walkthrough_samples = "4,16,48", 1, 16, 3
    lengths = {int(x) for x in args.lengths.split(",") if x}
    if "--new-tokens" in sys.argv:
        lengths.add(args.new_tokens)
    args.lengths = sorted(lengths)
    return args


def strata_steps(n, samples):
    """Indices (0-based) of the middle step of `samples` equal strata of n steps."""
    samples = max(1, min(samples, n))
    return sorted({int((k + 0.5) * n / samples) for k in range(samples)})


def main():
    args = parse_args()
    common.note_busy_machine()
    with contextlib.ExitStack() as stack:
        fleet = Fleet(args, stack)
        agreement = fleet.check(args.batch) if fleet.peers else {}
        tokens = fleet.engine.call("greedy_tokens", args.prompt_tokens, max(args.lengths))  # what the loop appends
        names = ["walkthrough", "engine"] + list(fleet.peers)
        variants, methods = {}, {}
        for n in args.lengths:
            for name in names:
                key = "%s@%d" % (name, n)
                if name == "walkthrough" and n > args.walkthrough_full:
                    variants[key], methods[key] = sampled(fleet, key, tokens[:n], args), "sampled"
                elif name == "walkthrough":
                    variants[key], methods[key] = fleet.engine_variant(key, {"kind": "walkthrough", "n": n}), "whole"
                else:
                    variants[key], methods[key] = fleet.generate_variant(name, args.batch, n), "whole"
        check_n = max([n for n in args.lengths if n <= args.walkthrough_full], default=None)
        if check_n:  # the estimator on a length that also runs whole
            key = "walkthrough-sampled@%d" % check_n
            variants[key], methods[key] = sampled(fleet, key, tokens[:check_n], args), "sampled"
        variants["floor"] = fleet.engine_variant("floor", {"kind": "floor", "batch": args.batch,
                                                               "steps": FLOOR_STEPS})

        shortest = "@%d" % min(args.lengths)
        common.interleaved({k: v for k, v in variants.items() if k.endswith(shortest) or k == "floor"}, 1,
                           warmup=False)  # the warm-up: one untimed run of each variant at the shortest length
        seconds = common.interleaved(variants, args.repeats, warmup=False)
        records = {k: fleet.engine.call("record", k) for k, m in methods.items() if m == "sampled"}

        ms = {}
        for key, runs in seconds.items():
            if key == "floor":
                per = FLOOR_STEPS
            elif methods[key] == "sampled":
                per = len(records[key]["steps"])  # the mean of the sampled steps
            else:
                per = int(key.split("@")[1])
            ms[key] = [s * 1000 / per for s in runs]
        med = {k: common.median(v) for k, v in ms.items()}
        result = {
            "lengths": args.lengths, "variants": names, "batch": args.batch, "prompt_tokens": args.prompt_tokens,
            "ms_per_token_median": med, "samples_ms_per_token": ms, "method": methods, "sampled_steps": records,
            "walkthrough_full_up_to": args.walkthrough_full, "floor_ms_per_token": med["floor"],
            "agreement": agreement, "peer_details": fleet.peer_details(),
        }
        print_table(result)
        if args.output:
            common.write_result(args.output, "length_scaling", args, fleet.thread_settings(), result,
                                versions=fleet.versions(), skipped=fleet.skipped)


def sampled(fleet, key, tokens, args):
    """The walkthrough's steps at the strata middles of len(tokens) steps, in the engine worker."""
    return fleet.engine_variant(key, {"kind": "walkthrough_steps", "tokens": tokens,
                                      "steps": strata_steps(len(tokens), args.walkthrough_samples)})


def print_table(result):
    med = result["ms_per_token_median"]
    names = result["variants"]
    print("\nms/token by generated tokens, batch %d (the walkthrough: 1), median; * = walkthrough estimated from "
          "sampled steps" % result["batch"])
    print("%-8s" % "tokens" + "".join("%15s" % n for n in names))
    for n in result["lengths"]:
        cells = []
        for name in names:
            key = "%s@%d" % (name, n)
            mark = "*" if result["method"].get(key) == "sampled" else ""
            cells.append("%15s" % ("%.2f%s" % (med[key], mark)))
        print("%-8d" % n + "".join(cells))
    for key in result["sampled_steps"]:
        if key.startswith("walkthrough-sampled@"):
            n = key.split("@")[1]
            print("estimate check at %s tokens: whole %.2f ms/token, sampled %.2f" % (
                n, med["walkthrough@%s" % n], med[key]))
    print("GEMV floor: %.2f ms/token" % result["floor_ms_per_token"])


if __name__ == "__main__":
    main()
