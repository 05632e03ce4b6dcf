"""cc-execute's benchmark: ``python -m bench`` (see bench/README.md).

Starts a real local stack (Redis, handler, worker) on free ports, measures each
figure against a baseline taken in the same run on the same machine, prints a
table and writes ``bench/results/latest.json``. Not part of the test suite.
"""
