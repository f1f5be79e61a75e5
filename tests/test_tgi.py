"""TGI's request schema and semantics (serving.tgi), without a server: parameters, their
defaults, what is refused and how errors map to TGI's statuses. TGI's source is quoted where a
rule comes from it (huggingface/text-generation-inference, router/src/lib.rs and server.rs,
server/text_generation_server/utils/tokens.py)."""
import json

import pytest

from kogpt2_serving.errors import BadRequest, PromptTooLong, UnsupportedContentType
from kogpt2_serving.generation.generator import TokenInfo
from kogpt2_serving.generation.scheduler import QueueFull
from kogpt2_serving.generation.stopping import EOS, LENGTH, STOP_SEQUENCE, StoppingCriteria
from kogpt2_serving.serving import tgi
from kogpt2_serving.settings import EngineLimits


def parse(value, stream=None):
    return tgi.parse_request(json.dumps(value, ensure_ascii=False).encode("utf-8"), "application/json", stream)


# huggingface_hub 2.4's InferenceClient.text_generation sends every TGI parameter, unset ones as null.
CLIENT_DEFAULTS = {"adapter_id": None, "best_of": None, "decoder_input_details": False, "details": False,
                   "do_sample": False, "frequency_penalty": None, "grammar": None, "max_new_tokens": None,
                   "repetition_penalty": None, "return_full_text": None, "seed": None, "stop": [],
                   "temperature": None, "top_k": None, "top_n_tokens": None, "top_p": None, "truncate": None,
                   "typical_p": None, "watermark": False}


def test_the_clients_default_parameters_mean_greedy_without_the_prompt():
    request = parse({"inputs": "안녕", "parameters": CLIENT_DEFAULTS, "stream": True})
    assert (request.inputs, request.stream, request.truncate, request.max_new_tokens_given) == ("안녕", True, None,
                                                                                              False)
    p = request.params
    assert (p.do_sample, p.return_full_text, p.details, p.stop, p.stop_style) == (False, False, False, (), "tgi")


def test_no_parameters_at_all_samples_as_tgis_default_parameters_do():
    # lib.rs default_parameters(): `do_sample: true` when the request has no "parameters".
    assert parse({"inputs": "안녕"}).params.do_sample is True
    assert parse({"inputs": "안녕", "parameters": {}}).params.do_sample is False


def test_the_route_decides_streaming_except_on_the_root_route():
    assert parse({"inputs": "a", "stream": True}, stream=False).stream is False  # /generate
    assert parse({"inputs": "a"}, stream=True).stream is True  # /generate_stream
    assert parse({"inputs": "a", "stream": True}).stream is True  # POST /: compat_generate


def test_max_new_tokens_left_out_is_the_rest_of_the_positions_within_the_cap():
    request = parse({"inputs": "a", "parameters": {"truncate": 3}})
    ids, params = tgi.fit_to_prompt(request, list(range(10)), positions=96)
    assert (ids, params.max_new_tokens) == ([7, 8, 9], 93)  # TGI truncates on the left
    assert tgi.fit_to_prompt(request, [1], positions=4096)[1].max_new_tokens == tgi.MAX_NEW_TOKENS
    given = parse({"inputs": "a", "parameters": {"max_new_tokens": 5}})
    assert tgi.fit_to_prompt(given, [1, 2], positions=96)[1].max_new_tokens == 5


@pytest.mark.parametrize("parameters, text", [
    ({"best_of": 2}, "`best_of` is not supported by this server (got 2)"),
    ({"watermark": True}, "`watermark` is not supported"),
    ({"decoder_input_details": True}, "`decoder_input_details` is not supported"),
    ({"top_n_tokens": 3}, "`top_n_tokens` is not supported"),
    ({"grammar": {"type": "json", "value": {}}}, "`grammar` is not supported"),
    ({"frequency_penalty": 0.5}, "`frequency_penalty` is not supported"),
    ({"adapter_id": "x"}, "`adapter_id` is not supported"),
    ({"num_beams": 2}, "unknown parameter 'num_beams'; TGI's parameters are: temperature,"),
    ({"truncate": 0}, "`truncate` must be a positive integer, got 0"),
    ({"truncate": True}, "`truncate` must be a positive integer, got true"),
    ({"temperature": -1}, "temperature must be a finite number > 0, got -1.0"),
    ({"max_new_tokens": 0}, "max_new_tokens must be in [1, 1024], got 0"),
    ({"stop": "다"}, None),  # a single string is taken (as our parameters take it)
])
def test_parameters_it_cannot_honour_are_refused_with_422_naming_them(parameters, text):
    if text is None:
        assert parse({"inputs": "a", "parameters": parameters}).params.stop == ("다",)
        return
    with pytest.raises(tgi.ValidationError) as e:
        parse({"inputs": "a", "parameters": parameters})
    assert (e.value.status, e.value.kind) == (422, "validation")
    assert text in e.value.message


@pytest.mark.parametrize("body, content_type, text", [
    (b'{"inputs": ""}', "application/json", "`inputs` cannot be empty"),
    (b'{"inputs": ["a"]}', "application/json", "`inputs` must be a string, got an array"),
    (b'{"parameters": {}}', "application/json", "`inputs` must be a string, got null"),
    (b'{"inputs": "a", "model": "x"}', "application/json", "unknown field 'model'; allowed: inputs, parameters"),
    (b'{"inputs": "a", "stream": 1}', "application/json", "`stream` must be true or false, got a number"),
    (b'[1]', "application/json", "expected a JSON object"),
    (b'{"inputs": "a"', "application/json", "body is not valid JSON"),
    (b'{"inputs": "\\ud800"}', "application/json", "inputs is not valid Unicode text"),
])
def test_bad_bodies_are_422(body, content_type, text):
    with pytest.raises(Exception) as e:
        tgi.parse_request(body, content_type)
    error = tgi.as_tgi_error(e.value)
    assert (error.status, error.kind) == (422, "validation") and text in error.message


def test_a_body_that_is_not_json_is_415():
    with pytest.raises(UnsupportedContentType) as e:
        tgi.parse_request(b'{"inputs": "a"}', "text/plain")
    assert tgi.as_tgi_error(e.value).status == 415 and "this route takes application/json" in e.value.message


def test_errors_take_tgis_statuses():
    assert (tgi.as_tgi_error(QueueFull("full")).status, tgi.as_tgi_error(QueueFull("full")).kind) == (429,
                                                                                                       "overloaded")
    too_long = tgi.as_tgi_error(PromptTooLong("too long"))
    assert (too_long.status, too_long.kind, too_long.message) == (422, "validation", "too long")
    assert tgi.as_tgi_error(BadRequest("x")).status == 422
    assert tgi.as_tgi_error(UnsupportedContentType("x")).status == 415


def test_tgis_stop_rule_ends_only_where_the_text_ends_with_the_stop_string_and_keeps_it():
    # tokens.py: StopSequenceCriteria matches re.escape(stop) + "$" on the output so far, after
    # StoppingCriteria checked max_new_tokens and then the eos ids; the text is not cut.
    rule = StoppingCriteria(eos_id=1, max_new_tokens=5, stop=["다."], style="tgi")
    assert rule(7, 1, "하였다.", 4) == (True, STOP_SEQUENCE, None)
    assert rule(7, 1, "하였다. 그", 2).stop is False  # matched inside the text, not at its end: goes on
    assert rule(1, 5, "하였다.", 0).reason == LENGTH  # length first, even for </s>
    assert rule(1, 2, "하", 0).reason == EOS
    ours = StoppingCriteria(eos_id=1, max_new_tokens=5, stop=["다."])
    assert ours(7, 1, "하였다. 그", 6) == (True, STOP_SEQUENCE, 2)  # the package's rule: anywhere, cut


def test_tokens_and_events_in_tgis_schema():
    specials, pieces = {1}, {1: "</s>"}.get
    assert tgi.token_json(TokenInfo(5, " 통", -0.5), specials, pieces) == {"id": 5, "text": " 통", "logprob": -0.5,
                                                                           "special": False}
    assert tgi.token_json(TokenInfo(1, "", -0.1), specials, pieces)["text"] == "</s>"
    event = tgi.stream_event(3, {"id": 5}, ("글", None))
    assert event.startswith(b"data:") and event.endswith(b"\n\n")
    assert json.loads(event[5:]) == {"index": 3, "token": {"id": 5}, "generated_text": "글", "details": None}


def test_info_describes_the_model_and_limits():
    info = tgi.info("demo", 96, EngineLimits())
    assert (info["max_total_tokens"], info["max_input_tokens"], info["max_best_of"]) == (96, 95, 1)
    assert info["model_pipeline_tag"] == "text-generation" and info["router"] == "kogpt2-serving"
