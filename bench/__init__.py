"""Benchmarks of the cxrgen package against straightforward references (see bench/README.md).

Run ``python bench/run.py``; these are measurements printed as ratios within one run, not timed tests.
"""
