"""The package's folders are its layers, and imports only point down.

    errors, settings, ...    (the package's own top-level modules)
    model/                   the Gluon network and its weight-name table, engine, device, MXNet internals
    text/                    tokenizers
    files/                   model files and directories, loading, converting
    generation/              decoding
    serving/                 the SageMaker contract, MMS, the gateway
    aws/                     packaging, deployment, the latency client
    cli/                     the command line
    testing/                 models and ports for tests and benchmarks; the runtime never imports it

A module may import from its own layer or any layer listed above it, never below. The
top-level compatibility modules (handler, handler_service, mxnet_entry, loader, params) only
re-export what users name in images, ``inference.py`` and scripts, and may import anything.
"""
import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src", "kogpt2_serving")
LAYERS = ["", "model", "text", "files", "generation", "serving", "aws", "cli", "testing"]
SHIMS = ("handler", "handler_service", "mxnet_entry", "loader", "params")


def modules():
    for dirpath, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                yield os.path.relpath(path, PACKAGE)[:-3].replace(os.sep, "."), path


def layer_of(module):
    """'serving.server' -> 'serving'; top-level modules ('errors', 'settings') -> ''."""
    head = module.split(".")[0]
    return head if head in LAYERS else ""


def imported(module, path):
    """Package-relative names of the package's modules `module` imports (relative or absolute)."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    package = module.split(".")[:-1] if not module.endswith("__init__") else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith("kogpt2_serving"):
                target = node.module[len("kogpt2_serving."):] if node.module != "kogpt2_serving" else ""
            else:
                continue
            yield target
            for alias in node.names:  # `from . import codec` names a module
                yield ".".join(p for p in [target, alias.name] if p)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("kogpt2_serving."):
                    yield alias.name[len("kogpt2_serving."):]


ALL = dict(modules())


@pytest.mark.parametrize("module", sorted(ALL))
def test_imports_point_down(module):
    if module in SHIMS:
        return
    mine = LAYERS.index(layer_of(module))
    upward = sorted({t for t in imported(module, ALL[module])
                     if (t in ALL or t + ".__init__" in ALL) and LAYERS.index(layer_of(t)) > mine})
    assert upward == [], "{} ({} layer) imports from a layer below it: {}".format(
        module, layer_of(module) or "top", upward)


def test_the_runtime_never_imports_testing():
    users = sorted(m for m in ALL if layer_of(m) != "testing"
                   and any(layer_of(t) == "testing" for t in imported(m, ALL[m]) if t in ALL or t + ".__init__" in ALL))
    assert users == []


def test_every_layer_is_a_package():
    for layer in LAYERS[1:]:
        assert os.path.isfile(os.path.join(PACKAGE, layer, "__init__.py")), layer


def test_the_documented_import_paths_still_work():
    """What users name in images, inference.py and scripts (README, docs/serving.md)."""
    import inspect

    import kogpt2_serving.handler_service as service_module
    from kogpt2_serving import handler, mxnet_entry
    from kogpt2_serving.generation import Generator
    from kogpt2_serving.generation.generator import Generator as generator_class
    from kogpt2_serving.loader import load_model
    from kogpt2_serving.params import parse_parameters
    from kogpt2_serving.serving import handler as serving_handler
    from kogpt2_serving.serving import mxnet_entry as serving_entry
    from kogpt2_serving.serving.handler_service import HandlerService

    for name in ("model_fn", "input_fn", "predict_fn", "output_fn", "predict_batch", "default_accept"):
        assert getattr(handler, name) is getattr(serving_handler, name), name  # the toolkit compares by identity
    assert (mxnet_entry.model_fn, mxnet_entry.transform_fn) == (serving_entry.model_fn, serving_entry.transform_fn)
    assert Generator is generator_class and callable(load_model) and callable(parse_parameters)
    # MMS instantiates the one class *defined* in the handler-service module (it checks __module__).
    defined = [c for _, c in inspect.getmembers(service_module, inspect.isclass) if c.__module__ == service_module.__name__]
    assert len(defined) == 1 and issubclass(defined[0], HandlerService)
