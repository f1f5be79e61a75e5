"""server_load.py's engine level replayed in this process: the scheduler without HTTP, timed by part.

The engine process's own loop (`ContinuousBatcher.iterate`) over the same requests server_load.py
sends to `/invocations` (its `request_body`: distinct prompts and seeds, sampling with top_k 50,
output lengths drawn from --new-tokens and held by min_new_tokens), from --clients clients that
each send their next request when the last is answered. It reports tokens/s, the steps and rows
per step, and where the time went: decode steps, prefills, token choice on the host, the cache's
row moves and rebuilds, and the rest (the loop itself). What it leaves out is what HTTP, the
workers and the socket add: server_load.py's engine mode minus this is their cost under load.

Usage: python benchmarks/engine_load.py [--model-dir DIR] [--clients 16] [--requests-per-client 2]
       [--new-tokens 16-128] [--dtype float32] [--output FILE.json]
Without --model-dir it uses the cached random model at KoGPT2 size (as the other benchmarks).
"""
import argparse
import collections
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (puts src/ on the path; nothing here imports MXNet before the threads are set)
from server_load import request_body, token_range  # noqa: E402

PARTS = ("step", "prefill", "insert", "move_row", "resize")  # Engine methods timed


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", help="model directory (default: the cached random model at KoGPT2 size)")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests-per-client", type=int, default=2)
    p.add_argument("--new-tokens", default="16-128", help="tokens per request: N, or LO-HI drawn uniformly")
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16 | int8 (default float32)")
    p.add_argument("--output", help="write the results as JSON here")
    args = p.parse_args(argv)
    try:
        args.token_range = token_range(args.new_tokens)
    except ValueError as e:
        p.error(str(e))
    return args


def main(argv=None):
    args = parse_args(argv)
    common.note_busy_machine()
    from kogpt2_serving.generation import scheduler
    from kogpt2_serving.generation.scheduler import ContinuousBatcher
    from kogpt2_serving.serving.engine_process import load_engine
    from kogpt2_serving.settings import engine_limits

    limits = engine_limits()
    generator, _ = load_engine(common.model_dir_or_cached(args.model_dir), "cpu", args.dtype, limits.max_rows)
    batcher = ContinuousBatcher(generator, limits)
    choose = scheduler._advance
    try:
        seconds, calls = time_parts(batcher)
        jobs, wall = replay(batcher, generator, args)
    finally:
        scheduler._advance = choose
    tokens = sum(s.generated_tokens for job in jobs for sequences in job.results for s in sequences)
    stats = batcher.stats
    parts = {name: round(seconds[name], 3) for name in PARTS + ("token_choice",)}
    parts["other"] = round(wall - sum(seconds.values()), 3)
    result = {"wall_s": round(wall, 3), "tokens": tokens, "tokens_per_s": round(tokens / wall, 1),
              "steps": stats.steps, "rows_per_step": round(stats.row_steps / max(stats.steps, 1), 2),
              "joins": stats.joins, "rebuilds": stats.rebuilds, "seconds": parts,
              "calls": {name: calls[name] for name in PARTS}}
    print("{} clients x {} requests, {} tokens in {:.2f} s: {:.1f} tokens/s; {} steps, {:.2f} rows per step".format(
        args.clients, args.requests_per_client, tokens, wall, result["tokens_per_s"], stats.steps,
        result["rows_per_step"]))
    for name, value in parts.items():
        print("  {:<13} {:7.3f} s  {:5.1f}%".format(name, value, 100 * value / wall))
    if args.output:
        from kogpt2_serving.model.device import ensure_threads_configured

        common.write_result(args.output, "engine_load", args, {"mxnet_omp_threads": ensure_threads_configured()},
                            result, modules=("mxnet",))
    return result


def time_parts(batcher):
    """Wrap the engine's methods and the scheduler's token choice with timers -> (seconds, calls),
    running totals by name."""
    from kogpt2_serving.generation import scheduler

    seconds, calls = collections.Counter(), collections.Counter()

    def timed(function, name):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                seconds[name] += time.perf_counter() - started
                calls[name] += 1
        return wrapper

    for name in PARTS:
        setattr(batcher.engine, name, timed(getattr(batcher.engine, name), name))
    scheduler._advance = timed(scheduler._advance, "token_choice")  # main() puts it back
    return seconds, calls


def replay(batcher, generator, args):
    """Every client's requests, each sent when its previous one is answered -> (jobs, wall seconds)."""
    from kogpt2_serving.generation.params import parse_parameters
    from kogpt2_serving.generation.scheduler import Job

    done = []

    def send(client, n):
        body = json.loads(request_body(client, n, args))
        item = generator.prepare(body["inputs"], parse_parameters(body["parameters"]))

        def answered(job):
            done.append(job)
            if job.error is None and n + 1 < args.requests_per_client:
                send(client, n + 1)

        batcher.submit(Job([item], on_done=answered))

    started = time.perf_counter()
    for client in range(args.clients):
        send(client, 0)
    total = args.clients * args.requests_per_client
    while len(done) < total and not any(job.error for job in done):
        batcher.iterate()
    failed = [job.error for job in done if job.error is not None]
    if failed:
        raise SystemExit("a request failed: {}".format(failed[0]))
    return done, time.perf_counter() - started


if __name__ == "__main__":
    main()
