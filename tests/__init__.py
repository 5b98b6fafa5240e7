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

# Torch's OpenMP threads spin while they wait for work (GNU OpenMP's default). The suite runs several torch
# processes at once on few cores (two test streams, Ray workers, job drivers, CLI subprocesses), and a spinning
# thread then burns the core its partner needs: two copies of tests/loopfree/test_gan.py side by side on 2 cores
# took 342 s each, against 24-29 s with passive waiting. Set before any test imports torch (OpenMP reads it
# when torch loads it) and inherited by every process the suite starts.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
