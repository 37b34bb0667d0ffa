"""Reliability stages (issue 13): fuzzed ext_proc streams, faults under load, a soak, 1,000 endpoints.

The fast tests in tests/reliability/ run short versions of the fuzz and the model-server kill;
`make bench-reliability` (`python -m epp.bench.reliability`) runs every stage at length and
writes bench/results/reliability.md.
"""
