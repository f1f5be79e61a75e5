"""What the gateway in front of Multi Model Server costs per request, side by side in one run.

One `ModelServer` (its own process group, temp dir, free port); the same one-token request is
sent alternately through the gateway (TCP to host:port, then the gateway's kept-alive unix
socket to MMS) and straight to MMS's inference unix socket (what a client reached before the
gateway, less TCP), back to back, one client, after a warm-up. Prints p50/p95 of both, the p50
difference (the gateway's cost) and the ratio.

Default model: the cached random KoGPT2-size model (benchmarks/.cache); `--tiny` uses a 2-layer
test model, where generation is ~1 ms and the hop's share is largest.
"""
import http.client
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

BODY = json.dumps({"inputs": "안녕하세요", "parameters": {"max_new_tokens": 1}}).encode("utf-8")
HEADERS = {"Content-Type": "application/json"}


def parse_args():
    p = common.parser(__doc__, new_tokens=1)
    p.add_argument("--requests", type=int, default=200, help="timed requests per path (default: %(default)s)")
    p.add_argument("--tiny", action="store_true", help="a 2-layer test model instead of the KoGPT2-size one")
    return p.parse_args()


def timed(connection):
    started = time.perf_counter()
    connection.request("POST", "/invocations", BODY, HEADERS)
    response = connection.getresponse()
    response.read()
    if response.status != 200:
        raise RuntimeError("HTTP {}".format(response.status))
    return time.perf_counter() - started


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main():
    args = parse_args()
    from kogpt2_serving.serving.local_http import _UnixConnection
    from kogpt2_serving.serving.server import ModelServer, ServerConfig
    from kogpt2_serving.testing import free_port
    from kogpt2_serving.testing import make_test_model

    requests = 20 if args.quick else args.requests
    model_dir = (make_test_model(tempfile.mkdtemp(prefix="kgs-gw-"), n_embd=64, n_head=4, n_positions=96)
                 if args.tiny or args.quick else common.model_dir(args))
    config = ServerConfig(model_dir=model_dir, port=free_port(), device="cpu",
                          log_file=os.path.join(tempfile.mkdtemp(prefix="kgs-gw-log-"), "mms.log"))
    with ModelServer(config) as server:
        paths = {"gateway": http.client.HTTPConnection("127.0.0.1", config.port, timeout=120),
                 "mms_direct": _UnixConnection(server.sockets.inference, 120)}
        for connection in paths.values():  # warm-up, both kept alive
            for _ in range(10):
                timed(connection)
        times = {name: [] for name in paths}
        for _ in range(requests):
            for name, connection in paths.items():
                times[name].append(timed(connection))
    summary = {name: {"p50_ms": 1000 * percentile(t, 0.5), "p95_ms": 1000 * percentile(t, 0.95)}
               for name, t in times.items()}
    cost = summary["gateway"]["p50_ms"] - summary["mms_direct"]["p50_ms"]
    ratio = summary["gateway"]["p50_ms"] / summary["mms_direct"]["p50_ms"]
    for name, row in summary.items():
        print("{:<11} p50 {:7.2f} ms  p95 {:7.2f} ms".format(name, row["p50_ms"], row["p95_ms"]))
    print("gateway cost: p50 +{:.2f} ms per request (gateway / direct = {:.3f}x), {} requests each, interleaved"
          .format(cost, ratio, requests))
    if args.output:
        common.write_result(args.output, "gateway_overhead", args, {"mxnet": "per worker: cores // workers"}, {
            "model": "tiny" if (args.tiny or args.quick) else "kogpt2-size", "requests": requests,
            "summary": summary, "gateway_cost_p50_ms": cost, "ratio_p50": ratio})


if __name__ == "__main__":
    main()
