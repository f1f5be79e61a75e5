"""Which handler functions a worker uses, by the SageMaker inference toolkit's rule.

The package's :mod:`kogpt2_serving.handler` provides every function. A user module
(``SAGEMAKER_PROGRAM``, default ``inference``, ``.py`` stripped; found on ``sys.path``, where
``<model_dir>/code`` is put first) overrides any of ``model_fn``, ``input_fn``,
``predict_fn``, ``output_fn``, or replaces the last three with ``transform_fn`` (defining
both kinds is a ValueError, as in the toolkit); ``pre_model_fn(model_dir)`` and
``model_warmup_fn(model_dir, model)`` run around ``model_fn`` when defined. Functions are
called by arity: one parameter more than the contract receives the MMS context.

This mirrors ``sagemaker_inference.transformer.Transformer`` (1.10) without its private
attributes, so the handler service can also batch: requests are decoded together only
while ``predict_fn`` is the package's own.
"""
import ast
import importlib
import importlib.util
import inspect
import os
import sys
from typing import Callable, NamedTuple, Optional

from ..settings import PROGRAM_ENV
from . import handler

DEFAULT_PROGRAM = "inference"
OVERRIDABLE = ("model_fn", "input_fn", "predict_fn", "output_fn")
IN_PROCESS = ("model_fn", "predict_fn", "transform_fn")  # a user's own: the model lives in the worker
WORKER_SIDE = ("input_fn", "output_fn")  # a user's own run in the light worker (not on the native frontend)
PACKAGE_HANDLER = "kogpt2_serving.handler"


class HandlerFunctions(NamedTuple):
    model_fn: Callable
    input_fn: Callable
    predict_fn: Callable
    output_fn: Callable
    transform_fn: Optional[Callable]  # a user's; None: input_fn -> predict_fn -> output_fn
    pre_model_fn: Optional[Callable]
    model_warmup_fn: Optional[Callable]
    user_module: Optional[str]

    @property
    def batchable(self):
        """Whether several requests may share one predict (our predict_fn, no transform_fn)."""
        return self.transform_fn is None and self.predict_fn is handler.predict_fn


def user_module_name():
    name = os.environ.get(PROGRAM_ENV) or DEFAULT_PROGRAM
    return name[:-3] if name.endswith(".py") else name


def add_code_dir(model_dir):
    """Put <model_dir>/code first on sys.path (and PYTHONPATH, for child processes)."""
    code_dir = os.path.join(model_dir, "code")
    if os.path.isdir(code_dir) and code_dir not in sys.path:
        sys.path.insert(0, code_dir)
        os.environ["PYTHONPATH"] = code_dir + os.pathsep + os.environ.get("PYTHONPATH", "")
        importlib.invalidate_caches()


def resolve(module_name=None):
    """The functions to use: the user module's where it defines them, else the package's."""
    module_name = module_name or user_module_name()
    found = {name: getattr(handler, name) for name in OVERRIDABLE}
    extra = dict(transform_fn=None, pre_model_fn=None, model_warmup_fn=None)
    module = importlib.import_module(module_name) if importlib.util.find_spec(module_name) else None
    if module is not None:
        own = {name: getattr(module, name, None) for name in OVERRIDABLE + tuple(extra)}
        if own["transform_fn"] and (own["input_fn"] or own["predict_fn"] or own["output_fn"]):
            raise ValueError("Cannot use transform_fn implementation in conjunction with input_fn, predict_fn, "
                             "and/or output_fn implementation (module {})".format(module_name))
        found.update({name: fn for name, fn in own.items() if fn is not None and name in OVERRIDABLE})
        extra.update({name: own[name] for name in extra})
    return HandlerFunctions(user_module=module_name if module else None, **found, **extra)


def in_process_reason(model_dir, module_name=None):
    """Why a user module needs the model inside each worker (it defines model_fn, predict_fn or
    transform_fn), or None. Read from its source, not imported: ``serve`` decides before any
    worker exists, and the module may import MXNet or do work at import."""
    return _defines(model_dir, IN_PROCESS, module_name)


def overrides_reason(model_dir, module_name=None):
    """Why a user module's handler functions would not run on the native frontend (it defines
    any of them), or None; read from its source as in_process_reason."""
    return _defines(model_dir, IN_PROCESS + WORKER_SIDE, module_name)


def _defines(model_dir, wanted, module_name):
    """'<file> defines <names>' for those of `wanted` the user module defines, or None."""
    module_name = module_name or user_module_name()
    code_dir = os.path.join(model_dir, "code")
    sys.path.insert(0, code_dir)
    importlib.invalidate_caches()
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        spec = None
    finally:
        sys.path.remove(code_dir)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    try:
        with open(spec.origin, "rb") as f:
            tree = ast.parse(f.read(), spec.origin)
    except (OSError, SyntaxError, ValueError) as e:
        return "{} cannot be read ({}): it runs in each worker as before".format(spec.origin, e)
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.ImportFrom):
            if any(alias.name == "*" for alias in node.names):
                return "{} has 'from {} import *', which may define {}".format(
                    spec.origin, node.module, " or ".join(wanted[:2]))
            # The package's own functions under their own names (what `package` writes) change nothing.
            names.update(alias.asname or alias.name for alias in node.names
                         if not (node.module == PACKAGE_HANDLER and alias.asname in (None, alias.name)))
    defined = [name for name in wanted if name in names]
    return "{} defines {}".format(spec.origin, " and ".join(defined)) if defined else None


def call(func, args, context):
    """func(*args) or func(*args, context), by its number of parameters."""
    count = len(inspect.signature(func).parameters)
    if count == len(args):
        return func(*args)
    if count == len(args) + 1:
        return func(*(tuple(args) + (context,)))
    raise TypeError("{} takes {} arguments but {} were given".format(func.__name__, count, len(args)))
