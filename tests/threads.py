"""Torch CPU threads for a test process: the cores shared among the pytest-xdist workers, at most 2 (the tests'
models are tiny). More threads than cores make OpenMP's waiting threads spin against each other: a 7 s test took
180 s with two workers of 2 threads each on 2 cores."""

import os

TEST_THREADS = max(1, min(2, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
