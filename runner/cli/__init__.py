"""``ccx``: the command line. Logic lives in the runner modules; this package parses and prints.

One module per family of commands (tasks, queue, schedules, services); what they share, and the one place that
turns errors into a sentence and an exit status, is in :mod:`runner.cli.helpers`.
"""

from __future__ import annotations

import click

from runner.cli import queue, schedules, services, tasks


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cc-execute", prog_name="ccx")
def main() -> None:
    """cc-execute: run coding-agent tasks one after another, each in a fresh process, output streamed live."""


# `ccx --help` lists them by name, whatever the order here.
for command in (*tasks.COMMANDS, *queue.COMMANDS, *schedules.COMMANDS, *services.COMMANDS):
    main.add_command(command)
