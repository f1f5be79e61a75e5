"""The ``kogpt2-serving`` command line: one module per command (see :mod:`.main`)."""
from .main import main  # noqa: F401
