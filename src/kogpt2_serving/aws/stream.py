"""Read a streamed invocation: ``invoke_endpoint_with_response_stream`` against an endpoint whose
container serves ``--frontend native`` (``KOGPT2_FRONTEND=native``), with ``"stream": true`` in
the body.

SageMaker hands the container's Server-Sent Events back as ``PayloadPart`` events whose bytes
are cut wherever the network cut them: one part may hold half an event, or several. So the
parts are joined and split at the blank line that ends each event::

    import boto3, json
    from kogpt2_serving.aws.stream import stream_events

    runtime = boto3.client("sagemaker-runtime")
    response = runtime.invoke_endpoint_with_response_stream(
        EndpointName="kogpt2", ContentType="application/json",
        Body=json.dumps({"inputs": "대한민국은", "stream": True,
                         "parameters": {"max_new_tokens": 64}}, ensure_ascii=False).encode("utf-8"))
    for event in stream_events(response["Body"]):
        print(event["token"]["text"], end="", flush=True)   # the last event has generated_text

An error the container sends mid-stream (an event ``{"error", "error_type"}``) and SageMaker's
own ``ModelStreamError`` / ``InternalStreamFailure`` are raised as :class:`StreamError`.
"""
import json


class StreamError(Exception):
    def __init__(self, kind, message):
        super().__init__("{}: {}".format(kind, message))
        self.kind, self.message = kind, message


def payload_bytes(event_stream):
    """The bytes of each PayloadPart of an ``invoke_endpoint_with_response_stream`` Body;
    SageMaker's error events raised."""
    for event in event_stream:
        if "PayloadPart" in event:
            yield event["PayloadPart"]["Bytes"]
        for kind in ("ModelStreamError", "InternalStreamFailure"):
            if kind in event:
                detail = event[kind]
                raise StreamError(detail.get("ErrorCode", kind), detail.get("Message", ""))


def sse_events(chunks):
    """Byte chunks of a Server-Sent Events stream, cut anywhere -> each event's JSON data."""
    buffer = b""
    for chunk in chunks:
        buffer += chunk.replace(b"\r\n", b"\n")
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            event = _data(block)
            if event is not None:
                yield event
    event = _data(buffer)
    if event is not None:
        yield event


def stream_events(event_stream):
    """TGI-schema token events of a streamed invocation, in order; an error event raised."""
    for event in sse_events(payload_bytes(event_stream)):
        if event.get("error") is not None:
            raise StreamError(event.get("error_type", "error"), event["error"])
        yield event


def _data(block):
    """The JSON of an event's data lines (None for a comment or an empty block)."""
    lines = [line[len(b"data:"):].lstrip(b" ") for line in block.split(b"\n") if line.startswith(b"data:")]
    return json.loads(b"\n".join(lines).decode("utf-8")) if lines else None
