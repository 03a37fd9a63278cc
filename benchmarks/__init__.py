"""Benchmarks: each comparison runs both sides in one invocation on the same machine and reports ratios.

``python -m benchmarks`` (``make bench``) writes ``runs/bench/report.json`` and prints a table;
``--smoke`` runs every comparison at toy size (the test suite's check of the harness).
"""
