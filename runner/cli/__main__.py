"""``python -m runner.cli``: how the stack starts its worker, and the tests their commands."""

from runner.cli import main

main()
