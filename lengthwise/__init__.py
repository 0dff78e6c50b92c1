"""Lengthwise: a length-aware scheduling gateway in front of vLLM workers.

This package holds what sits beside the three main packages (``server``, ``predictor``,
``simulator``): shared utilities (``lengthwise.common``), what runs inside or beside a vLLM
worker (``lengthwise.worker``), every benchmark (``lengthwise.bench``) and the command line
(``lengthwise.cli``).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lengthwise")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
