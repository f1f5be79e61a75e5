"""Call an endpoint once, as a smoke test, and show what the container answered.

Without parameters the body is a JSON string, as the 2020 walkthrough's MXNetPredictor sent it
(the answer is `[text, generated_token_count, seconds]`); with parameters it is
`{"inputs": ..., "parameters": {...}}`.
"""
import json
from typing import NamedTuple

from .calls import Call, out, send
from .errors import AwsCallError, DeploymentError

JSON = "application/json"


class Response(NamedTuple):
    content_type: str
    body: bytes

    def text(self):
        """Pretty JSON when the body is JSON, else the body as text."""
        decoded = self.body.decode("utf-8", errors="replace")
        try:
            return json.dumps(json.loads(decoded), ensure_ascii=False, indent=2)
        except ValueError:
            return decoded


def request_body(prompt, parameters=None):
    payload = prompt if parameters is None else {"inputs": prompt, "parameters": parameters}
    return json.dumps(payload, ensure_ascii=False).encode("utf-8")


def parse_parameters_option(text):
    """--parameters is a JSON object; the endpoint validates its fields."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as e:
        raise DeploymentError("--parameters must be a JSON object like '{{\"max_new_tokens\": 32}}': {}".format(e))
    if not isinstance(value, dict):
        raise DeploymentError("--parameters must be a JSON object, got {}".format(type(value).__name__))
    return value


def invoke_call(endpoint, body, content_type=JSON, accept=JSON):
    return Call("sagemaker-runtime", "invoke_endpoint", {"EndpointName": endpoint, "Body": body,
                                                         "ContentType": content_type, "Accept": accept})


def invoke(clients, endpoint, body, content_type=JSON, accept=JSON, write=out):
    try:
        response = send(clients, invoke_call(endpoint, body, content_type, accept), write)
    except AwsCallError as e:
        raise _explain(e, endpoint, clients.region)
    return Response(response.get("ContentType", ""), response["Body"].read())


def _explain(error, endpoint, region):
    """ModelError carries the container's own status and message; name them."""
    if error.code == "ModelError":
        return DeploymentError("the container on endpoint {} answered with an error: {}\n  fix: check the request "
                               "(see docs/deployment.md) and the endpoint's CloudWatch log".format(endpoint, error.message))
    if "not found" in error.message.lower():
        return DeploymentError("endpoint {} not found in {}: deploy it first (`kogpt2-serving deploy`) or pass "
                               "--region".format(endpoint, region))
    return error
