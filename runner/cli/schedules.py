"""The recurring-task and webhook commands: ``ccx schedule add|list|remove`` and ``ccx webhook set|show|clear``."""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable
from typing import Any

import click

from runner import clock, keys, schedules
from runner.cli.helpers import TaskRequest, emit_json, json_option, pass_runner, pass_task
from runner.client import Runner
from runner.errors import SpecError
from runner.render import escape_controls
from runner.webhooks import queue_setting


@click.group()
def schedule() -> None:
    """Recurring tasks by cron expression (UTC), submitted by the queue's worker when their time comes.

    \b
    ccx schedule add "0 3 * * *" "Run the nightly dependency update" --tools Edit,Bash
    ccx schedule list
    ccx schedule remove ID
    """


def _cron_checked(command: Callable[..., Any]) -> Callable[..., Any]:
    """Refuse a bad CRON before :func:`pass_runner`, under this, asks Redis anything."""

    @functools.wraps(command)
    def wrapper(*args: Any, cron: str, **kwargs: Any) -> Any:
        schedules.check_cron(cron)
        return command(*args, cron=cron, **kwargs)

    return wrapper


@schedule.command(name="add", context_settings={"ignore_unknown_options": True})
@click.argument("cron")
@pass_task(recurring=True)
@_cron_checked
@pass_runner
@json_option
def schedule_add(cron: str, request: TaskRequest, runner: Runner, as_json: bool) -> None:
    """Submit TASK at every time CRON names (five fields, UTC); takes the options of `ccx submit`."""
    entry = schedules.add(runner.redis, runner.settings.queue, cron, request.spec)
    if as_json:
        emit_json(entry.to_dict())
        return
    click.echo(entry.id)
    click.echo(f"next: {clock.iso(entry.next_at)} (the queue's worker submits it then)", err=True)


@schedule.command(name="list")
@pass_runner
@json_option
def schedule_list(runner: Runner, as_json: bool) -> None:
    """The queue's recurring tasks, soonest first."""
    entries = schedules.all_of(runner.redis, runner.settings.queue)
    if as_json:
        emit_json([entry.to_dict() for entry in entries])
        return
    if not entries:
        click.echo(f"no schedules on queue '{runner.settings.queue}'")
        return
    width = shutil.get_terminal_size((120, 20)).columns
    click.echo(f"{'ID':<12}  {'CRON':<15}  {'NEXT (UTC)':<19}  {'LAST TASK':<36}  TASK")
    for entry in entries:
        when = clock.iso(entry.next_at)[:19].replace("T", " ")
        line = f"{entry.id:<12}  {entry.cron:<15}  {when:<19}  {entry.last_task or '-':<36}  {escape_controls(entry.title())}"
        click.echo(line[:width])


@schedule.command(name="remove")
@click.argument("schedule_id")
@pass_runner
def schedule_remove(schedule_id: str, runner: Runner) -> None:
    """Stop a recurring task (tasks it already submitted are not touched)."""
    if not schedules.remove(runner.redis, runner.settings.queue, schedule_id):
        raise SpecError(f"No schedule {schedule_id} on queue '{runner.settings.queue}': see `ccx schedule list`.")
    click.echo(f"schedule {schedule_id} removed")


@click.group()
def webhook() -> None:
    """The queue's webhook: a signed JSON POST when a task ends (a task's own --webhook wins); docs/webhooks.md."""


@webhook.command("set")
@click.argument("url")
@click.option("--on-pause", is_flag=True, help="also POST when the queue pauses (event queue.paused).")
@pass_runner
def webhook_set(url: str, on_pause: bool, runner: Runner) -> None:
    """Send every ended task of the queue to URL (signed with the queue's secret: `ccx webhook show --secret`)."""
    queue_setting.set_queue_webhook(runner.redis, runner.settings.queue, url, on_pause)
    click.echo(f"queue '{runner.settings.queue}': webhook {url}" + (", also when it pauses" if on_pause else ""))


@webhook.command("show")
@click.option("--secret", "show_secret", is_flag=True, help="print the signing secret (for the receiver's config).")
@pass_runner
@json_option
def webhook_show(show_secret: bool, runner: Runner, as_json: bool) -> None:
    """Print the queue's webhook URL and where its signing secret is (--secret: the secret itself)."""
    name = runner.settings.queue
    hook = queue_setting.get_queue_webhook(runner.redis, name)
    where = f"Redis hash {keys.webhook_config_key(name)}, field secret"
    secret = queue_setting.queue_secret(runner.redis, name) if show_secret else None
    if as_json:
        emit_json({**hook.to_dict(), "secret_in": where, **({"secret": secret} if show_secret else {})})
    elif show_secret:
        click.echo(secret)
    else:
        click.echo(f"url       {hook.url or '(none: only tasks with their own webhook send one)'}")
        click.echo(f"on pause  {'yes' if hook.on_pause else 'no'}")
        click.echo(f"secret    in {where} (print it with --secret)")
        if hook.last_delivery:
            click.echo(f"last      {hook.last_delivery.get('event')} {hook.last_delivery.get('status')}")


@webhook.command("clear")
@pass_runner
def webhook_clear(runner: Runner) -> None:
    """Stop the queue's webhook (tasks with their own still send theirs; the secret stays)."""
    had = queue_setting.clear_queue_webhook(runner.redis, runner.settings.queue)
    click.echo(f"queue '{runner.settings.queue}': " + ("no webhook now" if had else "had no webhook"))


COMMANDS = (schedule, webhook)
