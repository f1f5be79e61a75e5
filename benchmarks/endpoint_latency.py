"""Seconds per token of a deployed endpoint (or a local server), as the 2020 walkthrough measured it.

The walkthrough's table ("평균 inference 시간 (초/토큰)" per ml.* instance type) came from
sending its prompt 20 times, dropping the first call and dividing each call's time by the
tokens it generated. This script does exactly that with the project's latency client
(kogpt2_serving.aws.latency: failed calls counted and shown, token counts read from every
response) and writes a result file that benchmarks/report.py turns into a row of the
redone table. Run it once per instance type:

  # a SageMaker endpoint (deployed with `make deploy INSTANCE_TYPE=ml.c5.2xlarge`, see docs/deployment.md)
  python benchmarks/endpoint_latency.py --endpoint kogpt2-serving --instance-type ml.c5.2xlarge \\
      --output benchmarks/results/endpoint-ml.c5.2xlarge.json
  # any running server
  python benchmarks/endpoint_latency.py --url http://127.0.0.1:8080 --instance-type my-box --output ...
  # start the serve stack here (Multi Model Server + our handler) on the random KoGPT2-size
  # model, measure, stop it
  python benchmarks/endpoint_latency.py --serve --workers 1 --output benchmarks/results/endpoint-local-w1.json

then `python benchmarks/report.py` (or `make bench`). GPU rows come from runs on GPU
instances (`--device-kind GPU` is inferred for ml.p*/ml.g* types).
Without --parameters the body is the walkthrough's bare JSON string (its handler generated
until </s>; ours stops at max_new_tokens 64 too); --new-tokens N sends
{"max_new_tokens": N, "min_new_tokens": N} so every call generates exactly N tokens
("details": true is added to any parameters: the responses then carry the token count).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

WALKTHROUGH_PROMPT = "아기 공룡 둘리는 희동이와"
GPU_FAMILIES = ("ml.p", "ml.g", "ml.inf")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--endpoint", help="SageMaker endpoint name (AWS credentials from the usual places)")
    target.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8080")
    target.add_argument("--serve", action="store_true", help="start the serve stack here, measure, stop it")
    p.add_argument("--instance-type", help="the row label: ml.c5.2xlarge, ... (default: 'this machine' for "
                                           "--serve, else required)")
    p.add_argument("--device-kind", choices=("CPU", "GPU"), help="default: GPU for ml.p*/ml.g*/ml.inf*, else CPU")
    p.add_argument("--calls", type=int, default=20, help="requests, the first untimed (default: %(default)s)")
    p.add_argument("--prompt", default=WALKTHROUGH_PROMPT, help="(default: the walkthrough's)")
    p.add_argument("--parameters", help="generation parameters as a JSON object")
    p.add_argument("--new-tokens", type=int, help="shorthand: exactly N tokens per call")
    p.add_argument("--model-dir", help="--serve: the model (default: the cached random KoGPT2-size model)")
    p.add_argument("--workers", type=int, default=1, help="--serve: worker processes (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="--serve: cpu | gpu (default: %(default)s)")
    p.add_argument("--region", help="AWS region for --endpoint")
    p.add_argument("--profile", help="AWS profile for --endpoint")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request with --url/--serve")
    p.add_argument("--quick", action="store_true", help="3 calls, 8 new tokens: checks the pipeline only")
    p.add_argument("--output", help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.calls, args.new_tokens = 3, args.new_tokens or 8
    if args.calls < 2:
        p.error("--calls must be >= 2 (the first call is a warm-up)")
    if not args.instance_type:
        if not args.serve:
            p.error("--instance-type is required with --endpoint/--url (it labels the row)")
        args.instance_type = "this machine (serve, %d worker%s)" % (args.workers, "s" if args.workers > 1 else "")
    args.device_kind = args.device_kind or ("GPU" if args.instance_type.startswith(GPU_FAMILIES) else "CPU")
    return args


def parameters(args):
    params = json.loads(args.parameters) if args.parameters else None
    if args.new_tokens:
        params = dict(params or {}, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
    if params is not None:
        params.setdefault("details", True)  # the generated-token count of each response
    return params


def main(argv=None):
    args = parse_args(argv)
    if args.serve:
        common.note_busy_machine()
    from kogpt2_serving.aws.invoke import request_body
    from kogpt2_serving.aws.latency import format_report, measure

    body = request_body(args.prompt, parameters(args))
    if args.serve:
        report = serve_and_measure(args, body)
    else:
        report = measure(sender(args), body, args.calls)
    for line in format_report(report, args.prompt):
        print(line)
    if args.output:
        common.write_result(args.output, "endpoint_latency", args, server_threads(args), summary(report, args))
    return 1 if report.errors and not report.samples else 0


def server_threads(args):
    if not args.serve:
        return {"note": "as configured on the endpoint"}
    from kogpt2_serving.model.device import threads_per_worker

    return {"server_workers": args.workers, "mxnet_omp_threads_per_worker": threads_per_worker(args.workers)}


def sender(args):
    from kogpt2_serving.aws.latency import endpoint_sender, url_sender

    if args.url:
        return url_sender(args.url, args.timeout)
    from kogpt2_serving.aws.session import Clients

    return endpoint_sender(Clients(region=args.region, profile=args.profile), args.endpoint)


def serve_and_measure(args, body):
    """A ModelServer of our own (own process group, temp dir, free port), always stopped."""
    import tempfile

    from kogpt2_serving.aws.latency import measure, url_sender
    from kogpt2_serving.serving.server import ModelServer, ServerConfig

    log = tempfile.NamedTemporaryFile(prefix="kgs-endpoint-", suffix=".log", delete=False)
    log.close()
    config = ServerConfig(model_dir=common.model_dir_or_cached(args.model_dir), port=common.free_port(),
                          workers=args.workers, device=args.device, log_file=log.name)
    try:
        with ModelServer(config) as server:
            return measure(url_sender(server.url + server.inference_path, args.timeout), body, args.calls)
    finally:
        os.remove(log.name)


def summary(report, args):
    from kogpt2_serving.aws.latency import per_token, stats

    def described(values):
        s = stats(values)
        return s._asdict() if s else None

    counted = [s.tokens for s in report.samples if s.tokens is not None]
    return {
        "instance_type": args.instance_type, "device_kind": args.device_kind,
        "target": args.endpoint and "endpoint %s" % args.endpoint or args.url or "serve (started by this script)",
        "prompt": args.prompt, "parameters": parameters(args), "calls": report.calls,
        "timed_calls": len(report.samples), "errors": report.errors,
        "seconds_per_request": described([s.seconds for s in report.samples]),
        "seconds_per_token": described(per_token(report.samples)),
        "tokens_per_request_mean": sum(counted) / len(counted) if counted else None,
    }


if __name__ == "__main__":
    sys.exit(main())
