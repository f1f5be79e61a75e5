"""Errors that know their HTTP status.

Everything a request or a model directory can get wrong is raised as one of these, so the
handler can answer with the right status and a message that names the problem, instead of a
500 with a traceback. Messages must stay free of file-system paths when they can reach a
client; model-loading errors (which only reach logs and the CLI) name their files.
"""


HF_INSTALL_HINT = "install kogpt2-serving[hf]"  # safetensors and tokenizers, for v2 / HF GPT-2 directories


class ServingError(Exception):
    """Base class: `status` is the HTTP status, `kind` a stable machine-readable name."""

    status = 500
    kind = "internal_error"

    def __init__(self, message):
        super().__init__(message)
        self.message = message


class BadRequest(ServingError):
    status = 400
    kind = "bad_request"


class InvalidParameter(BadRequest):
    """A generation parameter is unknown, of the wrong type, out of range or conflicting."""

    kind = "invalid_parameter"

    def __init__(self, name, message):
        super().__init__(message)
        self.parameter = name


class RequestTooCostly(BadRequest):
    """The request's rows or new tokens exceed the per-request budget (settings.RequestLimits)."""

    kind = "request_too_large"


class PromptTooLong(ServingError):
    status = 413
    kind = "prompt_too_long"

    @classmethod
    def check(cls, prompt_len, max_new_tokens, positions):
        """Raise when the prompt and its new tokens do not fit the model's positions."""
        total = prompt_len + max_new_tokens
        if total > positions:
            raise cls("prompt of {} tokens + max_new_tokens {} = {} exceeds the model's {} positions".format(
                prompt_len, max_new_tokens, total, positions))


class UnsupportedContentType(ServingError):
    status = 415
    kind = "unsupported_content_type"


class UnsupportedAccept(ServingError):
    status = 406
    kind = "unsupported_accept"


class ModelLoadError(ServingError):
    """The model directory, checkpoint, tokenizer or config cannot be used."""

    kind = "model_error"


def cause_of(error):
    """The line of an exception's text that says what went wrong, for a one-line message.

    MXNet 1.9 puts a C++ traceback first and the cause last (``MXNetError: Check failed:
    ...``); MXNet 1.6 puts the cause first and ``Stack trace:`` after it; most others have one
    line.
    """
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    for line in lines:
        if line.startswith("MXNetError:"):
            return line[len("MXNetError:"):].strip()
    for line in lines:
        if line.startswith("Stack trace"):
            break
        if not line.startswith(("Traceback (most recent call last)", "File ")):
            return line
    return type(error).__name__
