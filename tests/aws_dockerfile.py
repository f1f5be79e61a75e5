"""Read docker/Dockerfile.{cpu,gpu} as instructions, for the Dockerfile and container tests."""
import json
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKER = os.path.join(ROOT, "docker")


def instructions(device):
    """[(KEYWORD, arguments)] with continuation lines joined and comments dropped."""
    with open(os.path.join(DOCKER, "Dockerfile." + device)) as f:
        text = re.sub(r"\\\n", " ", "\n".join(line for line in f.read().splitlines()
                                               if not line.lstrip().startswith("#")))
    return [tuple(line.strip().split(None, 1)) for line in text.splitlines() if line.strip()]


def args_of(device):
    found = {}
    for keyword, rest in instructions(device):
        if keyword == "ARG":
            name, _, value = rest.partition("=")
            found[name] = json.loads(value) if value.startswith('"') else value
    return found


def exec_form(device, keyword):
    """ENTRYPOINT / CMD in exec (JSON) form, as a list."""
    values = [json.loads(rest) for k, rest in instructions(device) if k == keyword]
    assert len(values) == 1, "{} must appear once in exec form".format(keyword)
    return values[0]


def environment(device):
    """ENV KEY=VALUE pairs (this project's Dockerfiles set none beyond the base's)."""
    env = {}
    for keyword, rest in instructions(device):
        if keyword == "ENV":
            for pair in re.findall(r'(\w+)=("[^"]*"|\S+)', rest):
                env[pair[0]] = pair[1].strip('"')
    return env


def repository_path(device, container_path):
    """The file in this repository that a COPY puts at `container_path`."""
    for keyword, rest in instructions(device):
        if keyword == "COPY":
            source, destination = rest.split()
            if destination == container_path:
                return os.path.join(ROOT, source)
    raise AssertionError("nothing is copied to " + container_path)
