"""Reading a JSON file a model directory holds (config.json, tokenizer.json, ...), with an
error that names the file and what it was for."""
import json

from .errors import ModelLoadError


def read_json_file(path, what):
    """A JSON file's content; unreadable or invalid JSON is a ModelLoadError naming `what` and the file."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ModelLoadError("cannot read {}{}: {}".format(what + " " if what else "", path, e))
