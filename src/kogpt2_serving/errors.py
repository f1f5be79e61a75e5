"""Errors that know their HTTP status.

Everything a request or a model directory can get wrong is raised as one of these, so the
handler can answer with the right status and a message that names the problem, instead of a
500 with a traceback. Messages must stay free of file-system paths when they can reach a
client; model-loading errors (which only reach logs and the CLI) name their files.
"""


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


class PromptTooLong(ServingError):
    status = 413
    kind = "prompt_too_long"


class UnsupportedContentType(ServingError):
    status = 415
    kind = "unsupported_content_type"


class UnsupportedAccept(ServingError):
    status = 406
    kind = "unsupported_accept"


class ModelLoadError(ServingError):
    """The model directory, checkpoint, tokenizer or config cannot be used."""

    kind = "model_error"
