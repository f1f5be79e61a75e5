"""Load on a real `serve` stack over loopback HTTP: Multi Model Server + our handler, or the
native frontend.

Modes, each its own server (kogpt2_serving.serving.server.make_server: own session, temp dir,
free port), all reached at POST /invocations:
- `off`: the default before the engine process: the model in one MMS worker, no batching;
- `on`: static MMS batching (--batch-size, one worker; the gateway forwards to /predictions/model);
- `engine`: today's default: one engine process with continuous batching behind light workers
  (as many as the highest concurrency);
- `native`: the same engine behind the native (aiohttp) frontend instead of MMS;
- `off-wN`: the model in N workers, no batching (--workers).
Each mode gets concurrent requests from 1, 2, 4, 8, 16 and 32 client threads (persistent
connections, distinct prompts and seeds, HF-style JSON with details for the token count;
output lengths drawn uniformly from --new-tokens, e.g. 16-128, the same draws in every mode,
held exact by min_new_tokens) and reports latency p50/p95/p99, requests/s, generated tokens/s
and errors (anything but HTTP 200), then the engine's ratios to `off` and `on`. It stops every
server it started (process group), also on Ctrl-C.

Time to first token (`native`): after the load, streamed requests ("stream": true, the same
bodies) from 1, 8 and 16 clients; p50/p95 of the first event's arrival, and at one client its
ratio to the same prompt's prefill plus one step in this process (target <= 1.2).

Latency at one client, `engine` against `off`: the modes above run one after another, so a
machine that drifts between them (other tenants of a VM's host) moves their ratio. After the load
both servers run side by side and get the same one-client requests in turn, in ABBA order
(request n to `off` then `engine`, request n + 1 the other way round); their p50s give the ratio
the target reads (<= 1.05).

Server overhead: after the load, 60 short requests (1 new token, so generation noise does not
hide milliseconds) go to the "off", "engine" and "native" servers one at a time, and the same
requests are generated in this process (same model, parameters and thread count), in blocks of
10 each way so that both see the same machine load while neither runs right after the other's
OpenMP threads (the first request of a block is not counted); each request's HTTP latency minus
its in-process time is reported (native target: p50 < 2 ms). Then the same one by one with a
0.25 s pause before each request and each in-process run: real traffic has pauses, and idle
threads must wake up.

Usage: python benchmarks/server_load.py [--model-dir DIR | --kogpt2-size] [--modes off,on,engine,native]
       [--batch-size 8] [--max-batch-delay 10] [--workers 1,2] [--requests-per-client 2]
       [--new-tokens 16-128] [--concurrency 1,2,4,8,16,32] [--output FILE.json]
Without a model it builds a tiny random model (seconds); --kogpt2-size uses the cached random
model at KoGPT2 size (benchmarks/.cache, as the other benchmarks).
"""
import argparse
import contextlib
import http.client
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (puts src/ on the path; nothing here imports MXNet before setup_threads)

CONCURRENCY = (1, 2, 4, 8, 16, 32)
MODES = ("off", "on", "engine", "native")
TTFT_LEVELS = (1, 8, 16)
OVERHEAD_REQUESTS = 60  # per measurement: with 20 the p50 of a ~1 ms difference moved by 1.5 ms between runs
BLOCK = 10  # back-to-back overhead requests per block, each way (see measure_overhead)
IDLE_GAP = 0.25  # s before each request in the second overhead measurement


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", help="model directory to serve (default: a tiny random model)")
    p.add_argument("--kogpt2-size", action="store_true", help="serve the cached random model at KoGPT2 size")
    p.add_argument("--modes", default=",".join(MODES), help="default off,on,engine,native")
    p.add_argument("--batch-size", type=int, default=8, help="MMS batch size of the 'on' mode (default 8)")
    p.add_argument("--max-batch-delay", type=int, default=10, help="ms MMS waits to fill a batch (default 10)")
    p.add_argument("--requests-per-client", type=int, default=2)
    p.add_argument("--new-tokens", default="16-128",
                   help="tokens per request: N, or LO-HI drawn uniformly per request (default 16-128)")
    p.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)), help="default 1,2,4,8,16,32")
    p.add_argument("--workers", default="1",
                   help="worker counts to load with batching off (default 1,2; each worker gets cores / workers "
                        "threads); batching on and the overhead use 1 worker")
    p.add_argument("--output", help="write the results as JSON here")
    p.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    return p.parse_args()


def main():
    args = parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    try:
        args.token_range = token_range(args.new_tokens)
    except ValueError as e:
        raise SystemExit("server_load: {}".format(e))
    threads = common.setup_threads(args)  # the in-process baseline uses what a single worker gets
    model_dir, cleanup = pick_model(args)
    chosen = args.modes.split(",")
    modes = [(name, {"off": (1, 1, False), "on": (args.batch_size, 1, False),
                     "engine": (1, max(levels), True), "native": (1, 1, True)}[name]) for name in MODES if name in chosen]
    modes += [("off-w%d" % w, (1, w, False)) for w in sorted({int(w) for w in args.workers.split(",")} - {1})]
    results = {}
    try:
        for name, (batch_size, workers, engine) in modes:
            print("== {}: batch_size {}, {} worker(s){} ==".format(name, batch_size, workers,
                                                                  ", engine process" if engine else ""),
                  file=sys.stderr, flush=True)
            results[name] = run_mode(model_dir, batch_size, workers, engine, args, levels,
                                     "native" if name == "native" else "mms")
        overhead = {name: r["overhead"] for name, r in results.items() if r["overhead"]}
        one_client = compare_one_client(model_dir, args) if {"off", "engine"} <= set(results) and 1 in levels \
            else None
    finally:
        if cleanup:
            cleanup()
    report(results, overhead, levels, one_client)
    if args.output:
        common.write_result(args.output, "server_load", args, {"mxnet_omp_threads": threads},
                            {"modes": {k: v["table"] for k, v in results.items()},
                             "engine": results.get("engine", {}).get("engine"),
                             "ttft": results.get("native", {}).get("ttft"),
                             "workers": {k: v["workers"] for k, v in results.items()}, "overhead_ms": overhead,
                             "one_client_interleaved": one_client,
                             "load_average": os.getloadavg()})


def token_range(text):
    """--new-tokens "N" or "LO-HI" -> (lo, hi); ValueError naming the text otherwise."""
    lo, dash, hi = text.partition("-")
    if not (lo.isdigit() and (hi.isdigit() or not dash)) or not 0 < int(lo) <= int(hi or lo):
        raise ValueError("--new-tokens must be N or LO-HI with 0 < LO <= HI, got {!r}".format(text))
    return int(lo), int(hi or lo)


def pick_model(args):
    if args.model_dir:
        return args.model_dir, None
    if args.kogpt2_size:
        return common.model_dir(argparse.Namespace(model_dir=None)), None
    from kogpt2_serving.testing import make_test_model

    directory = tempfile.mkdtemp(prefix="kgs-bench-model-")
    make_test_model(directory, n_embd=64, n_head=4, n_positions=256)
    return directory, lambda: common._remove_tree(directory)


def request_body(client, n, args, stream=False):
    """The same request in every mode: its length drawn from (client, n), held by min_new_tokens."""
    import random

    lo, hi = args.token_range
    tokens = random.Random(1000 * client + n).randint(lo, hi)
    value = {"inputs": "{}번 손님의 {}번째 요청입니다".format(client, n), "parameters": {
        "max_new_tokens": tokens, "min_new_tokens": tokens, "do_sample": True, "seed": 1000 * client + n,
        "top_k": 50, "details": True}}
    if stream:
        value["stream"] = True
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


@contextlib.contextmanager
def started_server(model_dir, **options):
    """A serve stack (ServerConfig `options`) started with a log file of its own -> (server, port,
    log path); on exit it is stopped and its log removed. Not waited for: call wait_ready()."""
    from kogpt2_serving.serving.server import ServerConfig, make_server
    from kogpt2_serving.testing import free_port

    log = tempfile.NamedTemporaryFile(prefix="kgs-bench-", suffix=".log", delete=False)
    log.close()
    config = ServerConfig(model_dir=model_dir, port=free_port(), device="cpu", log_file=log.name, **options)
    server = make_server(config)
    # This process set OMP_NUM_THREADS for its own in-process baseline; the server must size
    # its workers' threads itself (cores / workers), as it does when started by `serve`.
    own_threads = os.environ.pop("OMP_NUM_THREADS", None)
    try:
        try:
            server.start()
        finally:
            if own_threads is not None:
                os.environ["OMP_NUM_THREADS"] = own_threads
        yield server, config.port, log.name
    finally:
        server.stop()
        os.remove(log.name)


def run_mode(model_dir, batch_size, workers, engine, args, levels, frontend="mms"):
    with started_server(model_dir, workers=workers, batch_size=batch_size, max_batch_delay=args.max_batch_delay,
                        engine=engine, frontend=frontend) as (server, port, log):
        server.wait_ready()
        path = server.inference_path
        warm_up(port, path, workers, args)
        table, samples = [], {}
        for level in levels:
            row, latencies = run_level(port, path, level, workers, args)
            table.append(row)
            samples[level] = latencies
            print("  concurrency {}: {}".format(level, row), file=sys.stderr, flush=True)
        ttft = measure_ttft(model_dir, port, args, levels) if frontend == "native" else None
        overhead = measure_overhead(model_dir, port, path) if batch_size == 1 and (workers == 1 or engine) else None
        died = sum(1 for line in open(log, encoding="utf-8", errors="replace") if "Worker died" in line
                   or "Backend worker process died" in line)
        stats = server.engine_stats()
        return {"table": table, "samples": samples, "worker_deaths": died, "overhead": overhead, "workers": workers,
                "ttft": ttft,
                "engine": {k: stats[k] for k in ("steps", "row_steps", "shared_steps", "joins", "max_rows")}
                if stats else None}


def warm_up(port, path, workers, args):
    """Three requests from as many clients as workers (at most 8: light workers build nothing),
    so every model-holding worker builds its graphs."""
    workers = min(workers, 8)

    def client(c):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        for n in range(3):
            post(conn, path, request_body(90 + c, n, args))
        conn.close()

    clients = [threading.Thread(target=client, args=(c,)) for c in range(workers)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()


def run_level(port, path, level, workers, args):
    results = []  # (client, n, seconds, status, generated tokens)
    failures = []  # the first few error answers, to print
    lock = threading.Lock()

    # One client alone is the latency comparison: more requests, so its p50 is not one request's.
    count = args.requests_per_client if level > 1 else max(6, args.requests_per_client)

    def client(c):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        for n in range(count):
            started = time.perf_counter()
            status, body = post(conn, path, request_body(c, n, args))
            elapsed = time.perf_counter() - started
            tokens = sum(e["details"]["generated_tokens"] for e in json.loads(body)) if status == 200 else 0
            with lock:
                results.append((c, n, elapsed, status, tokens))
                if status != 200 and len(failures) < 3:
                    failures.append("HTTP {}: {}".format(status, body[:300].decode("utf-8", "replace")))
            if status != 200:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        conn.close()

    clients = [threading.Thread(target=client, args=(c,)) for c in range(level)]
    started = time.perf_counter()
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    wall = time.perf_counter() - started
    ok = [r for r in results if r[3] == 200]
    latencies = sorted(r[2] for r in ok)
    row = {"concurrency": level, "workers": workers, "requests": len(results), "errors": len(results) - len(ok),
           "p50_ms": pct(latencies, 50), "p95_ms": pct(latencies, 95), "p99_ms": pct(latencies, 99),
           "requests_per_s": round(len(ok) / wall, 2), "tokens_per_s": round(sum(r[4] for r in ok) / wall, 1)}
    if failures:
        row["first_errors"] = failures
    return row, {(c, n): s for c, n, s, status, _ in results if status == 200}


def post(conn, path, body):
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as e:
        conn.close()
        return None, str(e).encode()


def compare_one_client(model_dir, args):
    """`off` and `engine` servers side by side, one client's requests to each in ABBA order ->
    {off_p50_ms, engine_p50_ms, ratio, requests, errors}."""
    count = 2 * max(6, args.requests_per_client)
    print("== one client, off and engine interleaved ==", file=sys.stderr, flush=True)
    with contextlib.ExitStack() as stack:
        servers = {name: stack.enter_context(started_server(model_dir, workers=1, batch_size=1, engine=engine))
                   for name, engine in (("off", False), ("engine", True))}  # both start at once
        conns = {}
        for name, (server, port, _) in servers.items():
            server.wait_ready()
            warm_up(port, server.inference_path, 1, args)
            conns[name] = (stack.enter_context(contextlib.closing(
                http.client.HTTPConnection("127.0.0.1", port, timeout=600))), server.inference_path)
        seconds, errors = {"off": [], "engine": []}, 0
        for n in range(count):
            for name in (("off", "engine") if n % 2 == 0 else ("engine", "off")):
                conn, path = conns[name]
                started = time.perf_counter()
                status, _ = post(conn, path, request_body(0, n, args))
                if status == 200:
                    seconds[name].append(time.perf_counter() - started)
                else:
                    errors += 1
    off, engine = (pct(sorted(seconds[k]), 50) for k in ("off", "engine"))
    return {"requests": count, "errors": errors, "off_p50_ms": off, "engine_p50_ms": engine,
            "ratio": round(engine / off, 3) if off and engine else None}


def measure_ttft(model_dir, port, args, levels):
    """Streamed requests from 1, 8 and 16 clients: when the first event arrives (and the whole
    stream); at one client, against prefill + one step of the same prompt in this process."""
    measured = {}
    for level in [c for c in TTFT_LEVELS if c in levels]:
        firsts, wholes, errors, lock = [], [], [], threading.Lock()
        count = args.requests_per_client if level > 1 else max(6, args.requests_per_client)

        def client(c):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
            for n in range(count):
                first, whole = stream_once(conn, request_body(c, n, args, stream=True))
                with lock:
                    (firsts.append(first), wholes.append(whole)) if first is not None else errors.append(whole)
            conn.close()

        clients = [threading.Thread(target=client, args=(c,)) for c in range(level)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()
        firsts.sort()
        wholes.sort()
        measured[level] = {"requests": len(firsts), "errors": len(errors), "ttft_p50_ms": pct(firsts, 50),
                           "ttft_p95_ms": pct(firsts, 95), "stream_p50_ms": pct(wholes, 50)}
        print("  streamed, concurrency {}: {}".format(level, measured[level]), file=sys.stderr, flush=True)
    if 1 in measured:
        reference = prefill_and_step(model_dir, [json.loads(request_body(0, n, args))["inputs"] for n in range(6)])
        measured[1]["prefill_plus_step_p50_ms"] = reference
        measured[1]["ratio"] = round(measured[1]["ttft_p50_ms"] / reference, 3)
    return measured


def stream_once(conn, body):
    """One streamed request -> (s to the first event, s to the end), or (None, error)."""
    started = time.perf_counter()
    try:
        conn.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        first = None
        while True:
            line = response.readline()
            if not line:
                break
            if line.startswith(b"data:"):
                if first is None:
                    first = time.perf_counter() - started
                if b'"error"' in line:
                    return None, line[:200]
        return (first, time.perf_counter() - started) if response.status == 200 else (None, response.status)
    except (OSError, http.client.HTTPException) as e:
        conn.close()
        return None, str(e)


def prefill_and_step(model_dir, prompts):
    """p50 ms of the prompts' first token plus one decode step (2 new tokens) in this process."""
    from kogpt2_serving.files.loader import load_model
    from kogpt2_serving.generation.generator import Generator
    from kogpt2_serving.generation.params import GenerationParameters

    generator = Generator(load_model(model_dir, device="cpu"))
    params = GenerationParameters(max_new_tokens=2, min_new_tokens=2)
    times = []
    for _ in range(3):
        for prompt in prompts:
            started = time.perf_counter()
            generator.generate([prompt], params)
            times.append(time.perf_counter() - started)
    times.sort()
    return pct(times[len(prompts):], 50)  # the first round warms up


def probe_body(n):
    return json.dumps({"inputs": "짧은 요청 {}번".format(n), "parameters": {"max_new_tokens": 1}},
                      ensure_ascii=False).encode("utf-8")


def measure_overhead(model_dir, port, path):
    """Per request: HTTP latency minus the same request's in-process generation time."""
    from kogpt2_serving.generation.generator import Generator
    from kogpt2_serving.files.loader import load_model
    from kogpt2_serving.generation.params import parse_parameters

    generator = Generator(load_model(model_dir, device="cpu"))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)

    def in_process(n):
        raw = json.loads(probe_body(n))
        started = time.perf_counter()
        generator.generate([raw["inputs"]], parse_parameters(raw["parameters"]))
        return time.perf_counter() - started

    for n in range(10):  # warm-up: both ways
        post(conn, path, probe_body(n))
        in_process(n)
    measured = {}
    for gap in (0.0, IDLE_GAP):
        over_http, alone, errors = {}, {}, 0
        # Back to back, in blocks of BLOCK requests each way: right after one side computed, its
        # OpenMP threads still spin and would slow the other side's first request on 2 cores
        # (each block's first request is that one, and is not counted). With a gap, one by one.
        block = BLOCK if not gap else 1
        for start in range(0, OVERHEAD_REQUESTS, block):
            numbers = range(start, min(start + block, OVERHEAD_REQUESTS))
            for n in numbers:
                time.sleep(gap)
                began = time.perf_counter()
                status, _ = post(conn, path, probe_body(n))
                if status == 200 and (gap or n != start):
                    over_http[n] = time.perf_counter() - began
                errors += status != 200
            for n in numbers:
                time.sleep(gap)
                seconds = in_process(n)
                if gap or n != start:
                    alone[n] = seconds
        differences = sorted(over_http[n] - alone[n] for n in over_http)
        http_times = sorted(over_http.values())
        measured[gap] = {"requests": len(differences), "p50": pct(differences, 50), "p95": pct(differences, 95),
                         "mean": round(1000 * statistics.mean(differences), 2), "http_p50": pct(http_times, 50),
                         "in_process_p50": pct(sorted(alone.values()), 50), "errors": errors}
    conn.close()
    return dict(measured[0.0], after_idle=dict(measured[IDLE_GAP], gap_s=IDLE_GAP))


def report(results, overhead, levels, one_client=None):
    print("\nmode  conc  reqs  errors   p50 ms   p95 ms   p99 ms    req/s    tok/s")
    for name, result in results.items():
        for row in result["table"]:
            print("{:<5} {:>4} {:>5} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8}".format(
                name, row["concurrency"], row["requests"], row["errors"], row["p50_ms"], row["p95_ms"], row["p99_ms"],
                row["requests_per_s"], row["tokens_per_s"]))
        print("{:<5} worker deaths in the MMS log: {}".format(name, result["worker_deaths"]))
    if "on" in results and "off" in results:
        print("\nbatching on / off, requests/s:  " + "  ".join(
            "c{}: {:.2f}x".format(a["concurrency"], b["requests_per_s"] / a["requests_per_s"])
            for a, b in zip(results["off"]["table"], results["on"]["table"]) if a["requests_per_s"]))
    for base in ("off", "on"):
        if "engine" in results and base in results:
            print("engine / {}, tokens/s:  ".format(base) + "  ".join(
                "c{}: {:.2f}x".format(a["concurrency"], b["tokens_per_s"] / a["tokens_per_s"])
                for a, b in zip(results[base]["table"], results["engine"]["table"]) if a["tokens_per_s"]))
    if "engine" in results and "off" in results:
        one = [(a, b) for a, b in zip(results["off"]["table"], results["engine"]["table"]) if a["concurrency"] == 1]
        if one and one[0][0]["p50_ms"]:
            print("engine / off at 1 client, p50 latency, modes run one after another: {:.3f}x".format(
                one[0][1]["p50_ms"] / one[0][0]["p50_ms"]))
        if one_client and one_client["ratio"]:
            print("engine / off at 1 client, p50 latency, interleaved ({} requests each, {} errors): {} / {} ms = "
                  "{:.3f}x (target <= 1.05)".format(one_client["requests"], one_client["errors"],
                                                   one_client["engine_p50_ms"], one_client["off_p50_ms"],
                                                   one_client["ratio"]))
        e = results["engine"]["engine"]
        print("engine: {} steps, {:.2f} rows per step, {} shared by several requests, {} joins of a running "
              "batch".format(e["steps"], e["row_steps"] / max(1, e["steps"]), e["shared_steps"], e["joins"]))
    for name in (n for n in results if n.startswith("off-w")):
        print("\n{} workers / 1 worker (batching off), requests/s:  ".format(results[name]["workers"]) + "  ".join(
            "c{}: {:.2f}x".format(a["concurrency"], b["requests_per_s"] / a["requests_per_s"])
            for a, b in zip(results["off"]["table"], results[name]["table"]) if a["requests_per_s"]))
    for base in ("engine", "off"):
        if "native" in results and base in results:
            print("native / {}, tokens/s:  ".format(base) + "  ".join(
                "c{}: {:.2f}x".format(a["concurrency"], b["tokens_per_s"] / a["tokens_per_s"])
                for a, b in zip(results[base]["table"], results["native"]["table"]) if a["tokens_per_s"]))
    ttft = results.get("native", {}).get("ttft") or {}
    for level, row in sorted(ttft.items()):
        print("native, streamed, {} client(s): time to first token p50 {} ms, p95 {} ms; whole stream p50 {} ms; "
              "errors {}".format(level, row["ttft_p50_ms"], row["ttft_p95_ms"], row["stream_p50_ms"], row["errors"]))
    if 1 in ttft:
        print("  time to first token / (prefill + one step in-process, {} ms) at 1 client: {:.3f}x (target <= 1.2)"
              .format(ttft[1]["prefill_plus_step_p50_ms"], ttft[1]["ratio"]))
    for name, measured in (overhead or {}).items():
        print("server overhead, {} (HTTP latency - in-process generation, {} one-token requests, one at a time): "
              "p50 {} ms, p95 {} ms, mean {} ms".format(name, measured["requests"], measured["p50"],
                                                        measured["p95"], measured["mean"]))
        idle = measured["after_idle"]
        print("  the same with {} s pauses: p50 {} ms, p95 {} ms, mean {} ms (HTTP p50 {} ms)".format(
            idle["gap_s"], idle["p50"], idle["p95"], idle["mean"], idle["http_p50"]))
    if overhead and "native" in overhead:
        for base in (b for b in ("off", "engine") if b in overhead):
            print("server overhead p50, native / {}: {:.2f}x (native target < 2 ms)".format(
                base, overhead["native"]["p50"] / overhead[base]["p50"] if overhead[base]["p50"] else float("nan")))
    print("load average (1, 5, 15 min): {:.2f} {:.2f} {:.2f} on {} core(s)".format(*os.getloadavg(), common.cpu_cores()))


def pct(sorted_values, q):
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, math.ceil(q / 100.0 * len(sorted_values)) - 1))  # nearest rank
    return round(1000 * sorted_values[index], 2)


if __name__ == "__main__":
    main()
