"""The benchmark suite (`make bench` = `python -m bench`): encoder limit, served load, decoding, ratios, plots.

Not part of `make test`; tests/bench/test_bench_smoke.py runs its pieces with tiny budgets.
"""
