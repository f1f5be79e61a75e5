"""The handler contract in-process: codec, the four functions, the MMS handler service with a
small fake context, the toolkit's override rule and the MXNet-toolkit transform_fn.
Real tiny model, real generation; the HTTP server is tested in test_server*.py."""
import json
import sys
import textwrap

import pytest

from kogpt2_serving.serving import codec, handler, handler_functions, mxnet_entry
from kogpt2_serving.errors import (BadRequest, InvalidParameter, PromptTooLong, RequestTooCostly, ServingError,
                                   UnsupportedAccept, UnsupportedContentType)
from kogpt2_serving.settings import RequestLimits, SettingError, request_limits
from kogpt2_serving.serving.handler_service import HandlerService
from kogpt2_serving.generation.params import GenerationParameters

DEFAULTS = GenerationParameters()


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return handler.model_fn(tiny_model_dir)


def solo(model, prompt, **params):
    """What the generator gives for one prompt alone."""
    return model.generator.generate([prompt], DEFAULTS._replace(**params))[0]


# --- media types and Accept -------------------------------------------------------------------

def test_media_type_parsing_keeps_the_charset():
    assert codec.parse_media_type('Application/JSON; Charset="UTF-8"') == ("application/json", {"charset": "UTF-8"})
    assert codec.request_media_type("text/plain; charset=euc-kr") == ("text/plain", "euc-kr")
    assert codec.request_media_type("application/x-jsonlines") == ("application/jsonlines", None)
    assert codec.request_media_type(None) == ("application/json", None)


@pytest.mark.parametrize("accept, expected", [
    (None, "application/json"),
    ("*/*", "application/json"),
    ("application/*", "application/json"),
    ("text/plain; charset=utf-8", "text/plain"),
    ("image/png, application/jsonlines", "application/jsonlines"),
    ("application/json;q=0.5, text/plain", "text/plain"),
])
def test_accept_negotiation(accept, expected):
    assert codec.choose_accept(accept) == expected


def test_star_accept_means_the_configured_default():
    assert codec.choose_accept("*/*", default="text/plain") == "text/plain"


def test_unsupported_accept_is_406_and_names_the_supported_types():
    with pytest.raises(UnsupportedAccept) as e:
        codec.choose_accept("image/png")
    assert e.value.status == 406
    assert e.value.message == ("cannot answer with 'image/png'; supported Accept types: application/json, "
                               "application/jsonlines, text/plain")


# --- request bodies ---------------------------------------------------------------------------

def test_sdk_string_escaped_and_raw_utf8_decode_to_the_same_prompt():
    escaped = codec.decode_payload('"\\uc544\\uae30 \\uacf5\\ub8e1"', "application/json")
    raw = codec.decode_payload('"아기 공룡"'.encode("utf-8"), "application/json; charset=utf-8")
    assert escaped == raw == codec.Payload((codec.Request(codec.SDK, (codec.Prompt("아기 공룡", DEFAULTS),)),), False)


def test_hf_object_with_a_list_of_inputs_shares_the_parameters():
    payload = codec.decode_payload(b'{"inputs": ["a", "b"], "parameters": {"max_new_tokens": 3}}', "application/json")
    params = DEFAULTS._replace(max_new_tokens=3)
    assert payload.requests == (codec.Request(codec.HF, (codec.Prompt("a", params), codec.Prompt("b", params))),)


def test_text_plain_in_another_charset_and_a_utf8_bom():
    assert codec.decode_payload("대한민국".encode("euc-kr"), "text/plain; charset=EUC-KR").prompts[0].text == "대한민국"
    assert codec.decode_payload(b"\xef\xbb\xbf\"x\"", "application/json").prompts[0].text == "x"


def test_jsonlines_skips_blank_lines_and_keeps_order():
    payload = codec.decode_payload(b'"one"\n\n{"inputs": "two"}\n', "application/jsonlines")
    assert payload.lines and [r.shape for r in payload.requests] == [codec.SDK, codec.HF]
    assert [p.text for p in payload.prompts] == ["one", "two"]


@pytest.mark.parametrize("body, content_type, error, message", [
    (b'{"inputs": ', "application/json", BadRequest,
     "body is not valid JSON: Expecting value at line 1 column 12"),
    (b"", "application/json", BadRequest, "body is not valid JSON: Expecting value at line 1 column 1"),
    (b'{"inputs": NaN}', "application/json", BadRequest, "body is not valid JSON: NaN is not a JSON number"),
    (b"42", "application/json", BadRequest,
     'expected a JSON string (the prompt) or an object {"inputs": ..., "parameters": {...}}, got a number'),
    (b'{"inputs": 5}', "application/json", InvalidParameter,
     "inputs must be a string or a non-empty list of strings, got a number"),
    (b'{"inputs": ["a", 1]}', "application/json", InvalidParameter,
     "inputs must be a string or a non-empty list of strings, got a number at inputs[1]"),
    (b'{"inputs": []}', "application/json", InvalidParameter,
     "inputs must be a string or a non-empty list of strings, got an empty list"),
    (b'{"parameters": {}}', "application/json", InvalidParameter,
     'the request object needs "inputs": a string or a list of strings'),
    (b'{"inputs": "a", "details": true}', "application/json", BadRequest,
     "unknown field 'details' in the request object; allowed: inputs, parameters, stream"),
    (b'{"inputs": "a", "stream": true}', "application/json", InvalidParameter,
     'streaming is not supported by this server (Multi Model Server answers each request in one response): '
     'send "stream": false or leave it out, or serve with --frontend native'),
    (b'{"inputs": ["a", " "]}', "application/json", InvalidParameter,
     "inputs[1] must be a non-empty prompt, got ' '"),
    (b'""', "application/json", InvalidParameter, "the JSON string must be a non-empty prompt, got ''"),
    (b" \n", "text/plain", InvalidParameter, "text/plain body must be a non-empty prompt, got ' \\n'"),
    (b'{"inputs": "a", "parameters": {"top_p": 1.5}}', "application/json", InvalidParameter,
     "top_p must be in (0, 1], got 1.5"),
    (b'"a"\n{"inputs": "b", "parameters": {"max_new_tokens": "5"}}', "application/jsonlines", InvalidParameter,
     "line 2: max_new_tokens must be an integer, got '5'"),
    (b'"a"\n{"inputs": ', "application/jsonlines", BadRequest,
     "line 2 is not valid JSON: Expecting value at line 1 column 12"),
    (b"\n\n", "application/jsonlines", BadRequest,
     "jsonlines body holds no request (one JSON string or object per line)"),
    (b'"\xff"', "application/json", BadRequest, "body is not valid utf-8: invalid start byte (byte 0xff at offset 1)"),
    (b"x", "image/png", UnsupportedContentType,
     "unsupported content type 'image/png'; use one of: application/json, application/jsonlines, text/plain"),
    (b"x", "text/plain; charset=klingon", UnsupportedContentType, "unsupported charset 'klingon'; send UTF-8"),
    (json.dumps({"inputs": ["p"] * 65}).encode(), "application/json", BadRequest,
     "a request holds at most 64 prompts (inputs and jsonlines lines together), got 65"),
])
def test_bad_bodies_get_a_precise_4xx(body, content_type, error, message):
    with pytest.raises(error) as e:
        codec.decode_payload(body, content_type)
    assert type(e.value) is error
    assert e.value.message == message


# --- the four functions -----------------------------------------------------------------------

def test_model_fn_loads_once_per_process(model, tiny_model_dir):
    assert handler.model_fn(tiny_model_dir) is model
    assert model.config.n_positions == 96 and model.tokenizer is model.loaded.tokenizer
    assert model.device.device_type == "cpu"


def test_walkthrough_request_gets_full_text_token_count_and_seconds(model):
    prompt = "아기 공룡 둘리는"
    body, content_type = handler.output_fn(
        handler.predict_fn(handler.input_fn(json.dumps(prompt), "application/json"), model), "application/json")
    text, tokens, seconds = json.loads(body.decode("utf-8"))
    expected = solo(model, prompt)[0]
    assert content_type == "application/json"
    assert (text, tokens) == (prompt + expected.text, expected.generated_tokens)
    assert isinstance(seconds, float) and seconds > 0
    assert "아기".encode("utf-8") in body  # Korean unescaped


def test_hf_answer_one_entry_per_input_and_sequence_with_details(model):
    payload = handler.input_fn(json.dumps({"inputs": ["대한민국", "오늘은"], "parameters": {
        "do_sample": True, "seed": 7, "num_return_sequences": 2, "max_new_tokens": 4, "details": True,
        "return_full_text": False}}), "application/json")
    answer = json.loads(handler.output_fn(handler.predict_fn(payload, model), None)[0].decode("utf-8"))
    params = payload.prompts[0].params
    expected = [s for prompt in ("대한민국", "오늘은") for s in model.generator.generate([prompt], params)[0]]
    # The answer decoded 4 rows at once, `expected` 2 at a time: oneDNN may take other kernels for
    # other batch shapes (and ISAs), so logprobs agree to float32 rounding, not bit for bit. 1e-4 is
    # ~100x the differences seen (7th digit) and far below the gaps between the logprobs of
    # different tokens; ids, texts and seeds must match exactly.
    logprobs = [[t.pop("logprob") for t in entry["details"]["tokens"]] for entry in answer]
    assert answer == [{"generated_text": s.text, "details": {
        "finish_reason": s.finish_reason, "generated_tokens": s.generated_tokens, "seed": 7,
        "tokens": [{"id": t.id, "text": t.text} for t in s.tokens]}} for s in expected]
    for got, sequence in zip(logprobs, expected):
        assert got == pytest.approx([t.logprob for t in sequence.tokens], abs=1e-4)
    assert all(len(entry["details"]["tokens"]) == entry["details"]["generated_tokens"] for entry in answer)


def test_greedy_details_report_logprobs(model):
    payload = handler.input_fn(b'{"inputs": "a", "parameters": {"max_new_tokens": 3, "details": true}}',
                               "application/json")
    answer = json.loads(handler.output_fn(handler.predict_fn(payload, model), None)[0].decode("utf-8"))
    tokens = answer[0]["details"]["tokens"]
    assert len(tokens) == answer[0]["details"]["generated_tokens"]
    assert all(isinstance(t["logprob"], float) and t["logprob"] <= 0 for t in tokens)


def test_text_plain_and_jsonlines_answers(model):
    prediction = handler.predict_fn(handler.input_fn("오늘은".encode("utf-8"), "text/plain"), model)
    body, content_type = handler.output_fn(prediction, "text/plain")
    assert (body.decode("utf-8"), content_type) == ("오늘은" + solo(model, "오늘은")[0].text, "text/plain; charset=utf-8")
    lines = handler.input_fn(b'"a"\n{"inputs": ["b", "c"], "parameters": {"max_new_tokens": 2}}', "application/jsonlines")
    body, content_type = handler.output_fn(handler.predict_fn(lines, model), "application/jsonlines")
    first, second = [json.loads(line) for line in body.decode("utf-8").splitlines()]
    assert content_type == "application/jsonlines" and body.endswith(b"\n")
    assert first[0] == "a" + solo(model, "a")[0].text
    assert second == [{"generated_text": p + solo(model, p, max_new_tokens=2)[0].text} for p in ("b", "c")]


def test_text_plain_answer_needs_exactly_one_text(model):
    payload = handler.input_fn(b'{"inputs": ["a", "b"], "parameters": {"max_new_tokens": 1}}', "application/json")
    with pytest.raises(UnsupportedAccept) as e:
        codec.check_accept(payload, "text/plain")
    assert e.value.message.startswith("Accept text/plain carries exactly one generated text, but this request asks for 2")
    with pytest.raises(UnsupportedAccept):
        handler.output_fn(handler.predict_fn(payload, model), "text/plain")


def test_a_bad_payload_in_a_batch_fails_alone(model):
    good = handler.input_fn(b'{"inputs": "a", "parameters": {"do_sample": true, "seed": 3, "max_new_tokens": 5}}',
                            "application/json")
    too_long = handler.input_fn(b'{"inputs": "a", "parameters": {"max_new_tokens": 95}}', "application/json")
    other = handler.input_fn(b'"b"', "application/json")
    outcomes = handler.predict_batch([good, too_long, other], model)
    assert isinstance(outcomes[1], PromptTooLong)
    assert outcomes[1].message == "prompt of 3 tokens + max_new_tokens 95 = 98 exceeds the model's 96 positions"
    assert outcomes[0].answers[0].sequences == [solo(model, "a", do_sample=True, seed=3, max_new_tokens=5)]
    assert outcomes[2].answers[0].sequences == [solo(model, "b")]


# --- the MMS handler service with a fake context ----------------------------------------------

class FakeRequest:
    def __init__(self, headers):
        self.headers, self.status, self.phrase, self.response = headers, 200, None, {}

    def get_request_properties(self):
        return self.headers


class FakeContext:
    """What MMS gives handle(): per-request headers in, per-request status/headers out."""

    def __init__(self, model_dir, headers=()):
        self.system_properties = {"model_dir": model_dir, "gpu_id": None, "batch_size": len(headers)}
        self.request_processor = [FakeRequest(h) for h in headers]

    def set_response_status(self, code=200, phrase="", idx=0):
        self.request_processor[idx].status, self.request_processor[idx].phrase = code, phrase

    def set_response_content_type(self, idx, value):
        self.request_processor[idx].response["content-type"] = value


def test_handler_service_answers_each_request_of_a_batch_on_its_own(tiny_model_dir, model):
    service = HandlerService()
    service.initialize(FakeContext(tiny_model_dir))
    headers = [{"Content-Type": "application/json"}, {"content-type": "application/json"},
               {"Content-Type": "text/plain", "Accept": "text/plain"}, {"Content-Type": "image/png"}]
    bodies = [b'"a"', b'{"inputs": ', "오늘은".encode("utf-8"), b"x"]
    context = FakeContext(tiny_model_dir, headers)
    answers = service.handle([{"body": bytearray(b)} for b in bodies], context)
    statuses = [(r.status, r.phrase, r.response["content-type"]) for r in context.request_processor]
    assert statuses == [(200, None, "application/json"), (400, "Bad Request", "application/json"),
                        (200, None, "text/plain; charset=utf-8"), (415, "Unsupported Media Type", "application/json")]
    assert json.loads(answers[0].decode("utf-8"))[0] == "a" + solo(model, "a")[0].text
    assert json.loads(answers[1].decode("utf-8")) == {
        "error": "body is not valid JSON: Expecting value at line 1 column 12", "error_type": "bad_request"}
    assert answers[2].decode("utf-8") == "오늘은" + solo(model, "오늘은")[0].text
    assert json.loads(answers[3].decode("utf-8"))["error_type"] == "unsupported_content_type"


def test_handler_service_without_a_model_answers_model_error(tmp_path):
    # A model file that cannot load (an empty directory would serve the shipped demo model):
    # loading fails, is logged, swallowed.
    (tmp_path / "broken.params").write_bytes(b"not an NDArray file")
    service = HandlerService()
    service.initialize(FakeContext(str(tmp_path)))
    context = FakeContext(str(tmp_path), [{"Content-Type": "application/json"}])
    answer = service.handle([{"body": b'"a"'}], context)
    assert (context.request_processor[0].status, context.request_processor[0].phrase) == (500, "Internal Server Error")
    assert json.loads(answer[0].decode("utf-8")) == {
        "error": "the model failed to load; see the server log", "error_type": "model_error"}
    assert str(tmp_path) not in answer[0].decode("utf-8")


# --- the toolkit's override rule --------------------------------------------------------------

@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Write <tmp>/code/<name>.py and make it the SAGEMAKER_PROGRAM."""
    def write(source, name="kogpt2_user_inference"):
        code = tmp_path / "code"
        code.mkdir(exist_ok=True)
        (code / (name + ".py")).write_text(textwrap.dedent(source), encoding="utf-8")
        monkeypatch.setenv("SAGEMAKER_PROGRAM", name + ".py")
        monkeypatch.syspath_prepend(str(code))
        monkeypatch.delitem(sys.modules, name, raising=False)
        return name
    return write


def test_without_a_user_module_the_package_functions_are_used(monkeypatch):
    monkeypatch.setenv("SAGEMAKER_PROGRAM", "no_such_user_module_here")
    functions = handler_functions.resolve()
    assert functions.user_module is None and functions.batchable
    assert functions.output_fn is handler.output_fn


def test_a_user_output_fn_overrides_and_receives_the_context(user_module, tiny_model_dir, model):
    user_module("""
        import json
        def output_fn(prediction, accept, context):
            texts = [s.text for a in prediction.answers for seqs in a.sequences for s in seqs]
            return json.dumps({"texts": texts, "has_context": context is not None}), "application/x-custom"
    """)
    service = HandlerService()
    service.initialize(FakeContext(tiny_model_dir))
    context = FakeContext(tiny_model_dir, [{"Content-Type": "application/json"}])
    answer = service.handle([{"body": b'"a"'}], context)
    assert json.loads(answer[0]) == {"texts": [solo(model, "a")[0].text], "has_context": True}
    assert context.request_processor[0].response["content-type"] == "application/x-custom"


def test_transform_fn_with_input_fn_is_refused_like_the_toolkit(user_module):
    name = user_module("""
        def transform_fn(model, body, content_type, accept):
            return body
        def input_fn(body, content_type):
            return body
    """)
    with pytest.raises(ValueError) as e:
        handler_functions.resolve()
    assert "Cannot use transform_fn implementation in conjunction with input_fn" in str(e.value)
    assert name in str(e.value)


def test_arity_decides_whether_the_context_is_passed():
    assert handler_functions.call(lambda a: a, ("x",), "ctx") == "x"
    assert handler_functions.call(lambda a, context: (a, context), ("x",), "ctx") == ("x", "ctx")
    with pytest.raises(TypeError):
        handler_functions.call(lambda: None, ("x",), "ctx")


# --- the stock MXNet toolkit entry ------------------------------------------------------------

def test_mxnet_entry_transform_fn_answers_like_the_walkthrough(model):
    body, content_type = mxnet_entry.transform_fn(model, '"아기 공룡"', "application/json", "application/json")
    text, tokens, _ = json.loads(body.decode("utf-8"))
    assert (text, tokens, content_type) == ("아기 공룡" + solo(model, "아기 공룡")[0].text,
                                           solo(model, "아기 공룡")[0].generated_tokens, "application/json")


def test_mxnet_entry_errors_with_and_without_a_context(model):
    context = FakeContext("unused", [{}])
    body, content_type = mxnet_entry.transform_fn(model, b"{", "application/json", "application/json", context)
    assert (context.request_processor[0].status, context.request_processor[0].phrase) == (400, "Bad Request")
    assert json.loads(body.decode("utf-8"))["error_type"] == "bad_request"
    from sagemaker_inference.errors import BaseInferenceToolkitError

    with pytest.raises(BaseInferenceToolkitError) as e:
        mxnet_entry.transform_fn(model, '"a"', "application/json", "image/png")
    assert (e.value.status_code, e.value.phrase) == (406, "Not Acceptable")
    assert json.loads(e.value.message)["error_type"] == "unsupported_accept"


# --- the per-request budget -------------------------------------------------------------------

def _hf(inputs, **parameters):
    return json.dumps({"inputs": inputs, "parameters": parameters})


@pytest.mark.parametrize("body, rows, tokens", [
    (_hf(["a"] * 4, max_new_tokens=16), 4, 64),  # one row per prompt
    (_hf(["a"] * 2, do_sample=True, num_return_sequences=3, max_new_tokens=10), 6, 60),
    (_hf("a", num_beams=4, num_return_sequences=2, max_new_tokens=8), 4, 32),  # beams decode num_beams rows
])
def test_the_budget_counts_decode_rows_and_new_tokens(body, rows, tokens):
    at_limit = RequestLimits(max_rows=rows, max_new_tokens=tokens)
    codec.decode_payload(body, "application/json", at_limit)  # exactly at the limits: accepted
    for over in (at_limit._replace(max_rows=rows - 1), at_limit._replace(max_new_tokens=tokens - 1)):
        with pytest.raises(RequestTooCostly) as e:
            codec.decode_payload(body, "application/json", over)
        assert (e.value.status, e.value.kind) == (400, "request_too_large")
        assert e.value.message.startswith("this request needs {} decode rows and {} new tokens".format(rows, tokens))
        assert "allows at most {} rows and {} new tokens per request".format(*over) in e.value.message


def test_the_budget_sums_jsonlines_lines_and_comes_from_the_environment(monkeypatch):
    body = '"a"\n{}\n'.format(_hf(["b", "c"], max_new_tokens=100))  # 64 + 2 x 100 tokens, 3 rows
    assert len(codec.decode_payload(body, "application/jsonlines").prompts) == 3  # defaults: 64 rows, 4096
    monkeypatch.setenv("KOGPT2_MAX_REQUEST_TOKENS", "263")
    with pytest.raises(RequestTooCostly, match="needs 3 decode rows and 264 new tokens over 3 prompt"):
        codec.decode_payload(body, "application/jsonlines")
    monkeypatch.setenv("KOGPT2_MAX_REQUEST_TOKENS", "264")
    monkeypatch.setenv("KOGPT2_MAX_REQUEST_ROWS", "2")
    with pytest.raises(RequestTooCostly, match="allows at most 2 rows and 264 new tokens"):
        codec.decode_payload(body, "application/jsonlines")


@pytest.mark.parametrize("value", ["0", "-3", "many", "1.5", "\u00b2"])  # "²" is a digit to str.isdigit, not to int()
def test_a_bad_budget_setting_names_the_variable(value):
    with pytest.raises(SettingError) as e:
        request_limits({"KOGPT2_MAX_REQUEST_ROWS": value})
    assert e.value.message == "KOGPT2_MAX_REQUEST_ROWS must be a positive integer, got {!r}".format(value)
    assert request_limits({}) == RequestLimits(64, 4096)


def test_serve_refuses_a_bad_budget_setting_before_starting(tiny_model_dir, monkeypatch, capsys):
    from kogpt2_serving.cli import main

    monkeypatch.setenv("KOGPT2_MAX_REQUEST_TOKENS", "lots")
    assert main(["serve", "--model-dir", tiny_model_dir]) == 1
    assert "error: KOGPT2_MAX_REQUEST_TOKENS must be a positive integer, got 'lots'" in capsys.readouterr().err


# --- edges of the body: nesting, surrogates, charsets -------------------------------------------

@pytest.mark.parametrize("depth, ok", [(16, True), (17, False), (100000, False)])
def test_json_nesting_is_bounded_without_exhausting_the_stack(depth, ok):
    body = '{"inputs": "a", "parameters": {"stop": ' + "[" * (depth - 2) + "]" * (depth - 2) + "}}"
    with pytest.raises(ServingError) as e:
        codec.decode_payload(body, "application/json")
    if ok:  # 16 levels parse; the parameter check then refuses the nested list itself
        assert (type(e.value), e.value.message[:31]) == (InvalidParameter, "stop must be a string or a list")
    else:
        assert (type(e.value), e.value.message) == (
            BadRequest, "body nests JSON arrays or objects deeper than 16 levels (a request needs 3)")


@pytest.mark.parametrize("charset", ["euc-kr", "cp949", "utf-16", "UTF-8", "latin-1", "utf-7"])
def test_text_charsets_decode(charset):
    text = "한글 abc" if charset not in ("latin-1",) else "abc"
    payload = codec.decode_payload(('"{}"'.format(text)).encode(charset), "application/json; charset=" + charset)
    assert payload.prompts[0].text == text


@pytest.mark.parametrize("charset", ["rot13", "rot_13", "base64", "hex", "zip", "bz2", "uu", "quopri", "punycode",
                                     "idna", "unicode_escape", "raw_unicode_escape", "undefined"])
def test_codecs_that_are_not_text_charsets_get_415(charset):
    with pytest.raises(UnsupportedContentType) as e:
        codec.decode_payload(b'"a"', "application/json; charset=" + charset)
    assert e.value.message == "charset {!r} is not a text encoding; send UTF-8".format(charset)


def test_error_bodies_survive_a_lone_surrogate_in_the_message():
    error = ServingError("bad \ud800 value")
    assert json.loads(codec.error_body(error).decode("ascii")) == {"error": "bad \ud800 value",
                                                                   "error_type": "internal_error"}


@pytest.mark.parametrize("name, value, message", [
    ("KOGPT2_MAX_BATCH_ROWS", "0", "KOGPT2_MAX_BATCH_ROWS must be a positive integer, got '0'"),
    ("KOGPT2_MAX_CACHE_TOKENS", "1e4", "KOGPT2_MAX_CACHE_TOKENS must be a positive integer, got '1e4'"),
    ("KOGPT2_MAX_QUEUE", "-1", "KOGPT2_MAX_QUEUE must be a positive integer, got '-1'"),
    ("KOGPT2_REQUEST_TIMEOUT_SECONDS", "0", "KOGPT2_REQUEST_TIMEOUT_SECONDS must be a number of seconds > 0, got '0'"),
    ("KOGPT2_REQUEST_TIMEOUT_SECONDS", "inf", "KOGPT2_REQUEST_TIMEOUT_SECONDS must be a number of seconds > 0, "
                                              "got 'inf'"),
    ("KOGPT2_REQUEST_TIMEOUT_SECONDS", "soon", "KOGPT2_REQUEST_TIMEOUT_SECONDS must be a number of seconds > 0, "
                                               "got 'soon'"),
])
def test_a_bad_engine_setting_names_the_variable(name, value, message):
    from kogpt2_serving.settings import EngineLimits, engine_limits

    with pytest.raises(SettingError) as e:
        engine_limits({name: value})
    assert e.value.message == message
    assert engine_limits({}) == EngineLimits(16, 16384, 64, 50.0)
    assert engine_limits({"KOGPT2_REQUEST_TIMEOUT_SECONDS": "2.5"}).request_timeout == 2.5


@pytest.mark.parametrize("env, message", [
    ({"KOGPT2_MAX_QUEUE": "none"}, "error: KOGPT2_MAX_QUEUE must be a positive integer, got 'none'"),
    ({"KOGPT2_DRAIN_SECONDS": "-1"}, "error: KOGPT2_DRAIN_SECONDS must be a number of seconds >= 0, got '-1'"),
    ({"KOGPT2_WATCHDOG_SECONDS": "x"}, "error: KOGPT2_WATCHDOG_SECONDS must be a number of seconds >= 0, got 'x'"),
    ({"KOGPT2_ENGINE": "maybe"}, "error: KOGPT2_ENGINE must be on or off, got 'maybe'"),
])
def test_serve_refuses_a_bad_engine_setting_before_starting(tiny_model_dir, monkeypatch, capsys, env, message):
    from kogpt2_serving.cli import main

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["serve", "--model-dir", tiny_model_dir]) == 1
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("source, reason", [
    ("def input_fn(body, content_type):\n    return body\n", None),
    ("from kogpt2_serving.handler import model_fn, predict_fn\n", None),  # the package's own, as they are
    ("from kogpt2_serving.handler import predict_fn as base\n\ndef predict_fn(d, m):\n    return base(d, m)\n",
     "defines predict_fn"),
    ("import json\n\ndef predict_fn(data, model):\n    return data\n", "defines predict_fn"),
    ("from kogpt2_serving.mxnet_entry import model_fn, transform_fn  # noqa\n", "defines model_fn and transform_fn"),
    ("model_fn = None\n", "defines model_fn"),
    ("from helpers import *\n", "has 'from helpers import *', which may define model_fn or predict_fn"),
    ("def broken(:\n", "cannot be read"),
])
def test_which_user_modules_keep_the_model_in_the_workers(tmp_path, source, reason):
    """Read from the source, never imported (the module may import MXNet or do work at import);
    the package's own functions imported under their names change nothing."""
    from kogpt2_serving.serving.handler_functions import in_process_reason

    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "inference_probe_x.py").write_text("raise SystemExit('imported')\n" + source)
    found = in_process_reason(str(tmp_path), "inference_probe_x")
    if reason is None:
        assert found is None
    else:
        assert found.startswith(str(tmp_path / "code" / "inference_probe_x.py")) and reason in found, found
    assert in_process_reason(str(tmp_path), "no_such_module_here") is None


def test_the_packaged_inference_py_keeps_the_engine(tmp_path):
    from kogpt2_serving.aws.packaging import INFERENCE_PY
    from kogpt2_serving.serving.handler_functions import in_process_reason

    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "inference.py").write_text(INFERENCE_PY)
    assert in_process_reason(str(tmp_path), "inference") is None
