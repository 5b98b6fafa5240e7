"""The test suite. Imported before tests/conftest.py and every test module."""

import os
import sys

# The test session caches compiled modules as each is first imported, even where PYTHONDONTWRITEBYTECODE is set: the suite
# starts dozens of Python processes (Ray workers, job drivers, CLI subprocesses, each inheriting this
# environment) that import torch, diffusers, Ray and MLflow, and without a cache every one compiles them again.
# This lets the README's test command install with `--no-compile` (pip's compile step compiles every installed
# file, most of which no test imports). Only .pyc files under the virtual environment and the checkout change.
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
