"""Reading a streamed invocation (kogpt2_serving.aws.stream): SageMaker's PayloadParts cut the
container's Server-Sent Events anywhere; the events come back whole and in order."""
import pytest

from kogpt2_serving.aws.stream import StreamError, sse_events, stream_events
from kogpt2_serving.serving import tgi

EVENTS = [{"index": i, "token": {"id": 10 + i, "text": "토큰{}\n".format(i), "logprob": -0.5, "special": False},
           "generated_text": None, "details": None} for i in range(1, 5)]
WIRE = b"".join(tgi.stream_event(e["index"], e["token"]) for e in EVENTS[:3]) + b":keep-alive\n\n" + \
    tgi.stream_event(4, EVENTS[3]["token"], ("토큰1토큰2토큰3토큰4", None))


def parts(data, size):
    return [{"PayloadPart": {"Bytes": data[i:i + size]}} for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, len(WIRE)])
def test_events_cut_at_any_byte_come_back_whole(size):
    got = list(stream_events(parts(WIRE, size)))
    assert [e["token"] for e in got] == [e["token"] for e in EVENTS]  # a "\n" inside a token's text survives
    assert got[-1]["generated_text"] == "토큰1토큰2토큰3토큰4"


def test_crlf_line_ends_and_a_missing_final_blank_line():
    assert list(sse_events([b'data: {"a": 1}\r\n\r\ndata:{"b"', b': 2}'])) == [{"a": 1}, {"b": 2}]


def test_an_error_event_or_a_sagemaker_stream_error_is_raised():
    error = b'data:{"error": "the engine process ended", "error_type": "engine_unavailable"}\n\n'
    with pytest.raises(StreamError) as e:
        list(stream_events(parts(WIRE[:40], 40) + [{"PayloadPart": {"Bytes": WIRE[40:]}}] + parts(error, 5)))
    assert (e.value.kind, e.value.message) == ("engine_unavailable", "the engine process ended")
    with pytest.raises(StreamError) as e:
        list(stream_events([{"ModelStreamError": {"ErrorCode": "ModelStreamError", "Message": "boom"}}]))
    assert (e.value.kind, e.value.message) == ("ModelStreamError", "boom")
