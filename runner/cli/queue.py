"""The queue commands: ``ccx pause``, ``resume`` and ``budget``, and the queue's part of ``ccx status``."""

from __future__ import annotations

import click

from runner.cli.helpers import emit_json, pass_runner
from runner.client import Runner
from runner.render import escape_controls


def print_queue_status(runner: Runner, as_json: bool) -> None:
    """``ccx status`` without a task id: running or paused (why, until when), its running and queued tasks, spend."""
    state = runner.queue_state()
    running = runner.list(5, status="running")
    waiting = runner.queue.count
    if as_json:
        emit_json({**state.to_dict(), "running": [r.id for r in running], "queued": waiting, "costs": runner.costs()})
        return
    spent = runner.costs()
    # Escaped always: the reason is whatever `ccx pause --reason` was given.
    click.echo(f"queue '{runner.settings.queue}': {escape_controls(state.describe())}")
    click.echo(f"running: {', '.join(r.id for r in running) or 'nothing'}; queued: {waiting}")
    budget_text = f" of ${spent['budget_per_day']:.2f} a day" if "budget_per_day" in spent else ""
    click.echo(f"spent: ${spent['today']:.4f} today{budget_text}, ${spent['total']:.4f} in all")


@click.command()
@click.option("--reason", default="paused by hand", show_default=True, help="shown with the pause.")
@pass_runner
def pause(reason: str, runner: Runner) -> None:
    """Hold the queue: the running task goes on, nothing new starts until `ccx resume`."""
    click.echo(f"queue '{runner.settings.queue}': {escape_controls(runner.pause(reason).describe())}")


@click.command()
@pass_runner
def resume(runner: Runner) -> None:
    """End the queue's pause (a usage limit, a backoff, rejected credentials or `ccx pause`)."""
    if not runner.resume():
        click.echo(f"queue '{runner.settings.queue}' was not paused.", err=True)
        return
    click.echo(f"queue '{runner.settings.queue}': running")


@click.command()
@click.argument("usd", required=False, type=float)
@click.option("--per", type=click.Choice(["day"]), default="day", show_default=True, help="the budget's period.")
@click.option("--off", is_flag=True, help="remove the budget.")
@pass_runner
def budget(usd: float | None, per: str, off: bool, runner: Runner) -> None:
    """Set the queue's spend budget: `ccx budget 20 --per day`; it pauses before the next task once reached."""
    if off:
        runner.set_budget(None)
    elif usd is not None:
        runner.set_budget(usd)  # refuses nan, inf and 0 or less, in one sentence
    spent = runner.costs()
    if "budget_per_day" in spent:
        click.echo(f"budget ${spent['budget_per_day']:.2f} per day; spent ${spent['today']:.4f} today")
    else:
        click.echo(f"no budget; spent ${spent['today']:.4f} today")


COMMANDS = (pause, resume, budget)
