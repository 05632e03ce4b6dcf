"""Outcomes kept for a caller that never read them (handler/kept.py): a run that reached its end while its
caller was cut off is given back, its output replayed, to the task's next attempt, instead of running twice."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from handler.kept import PERSIST_AFTER, READ_GRACE, READ_MOST, KeptOutcomes, OutputTail
from handler.protocol import NOTHING_KEPT, ExecuteResult
from tests.handler.helpers import PY, arun, eventually, serving

# Appends a line to <file> each time it runs, then prints two lines on stdout and one on stderr.
COUNTED = r"""
import sys
with open(sys.argv[1], "a") as runs:
    runs.write("ran\n")
print("first", flush=True)
print("oops", file=sys.stderr, flush=True)
print("last", flush=True)
"""


def _runs(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_a_run_whose_answer_was_never_read_is_given_back_once_not_run_again(tmp_path: Path) -> None:
    """The caller got cut off (no close frame) after its run ended: the next attempt, naming that run in
    ``collect``, gets its exit code and its whole output, and the command does not run again. The outcome is
    given back once: an attempt after that runs the command."""
    runs = tmp_path / "runs"

    async def scenario() -> None:
        async with serving() as served:
            cut = await served.client()
            first = await cut.run("a", [PY, "-c", COUNTED, str(runs)], run="R1")
            assert first.result["exit_code"] == 0 and _runs(runs) == 1
            cut.connection.transport.abort()  # what a partition or a frozen worker looks like: no goodbye
            await eventually(lambda: not served.handler.sessions, 10, what="the cut-off session to end")
            async with await served.client() as again:
                given = await again.run("b", [PY, "-c", COUNTED, str(runs)], run="R2", collect=["R0", "R1"])
            assert given.result["collected"] == "R1"
            assert (given.result["exit_code"], given.output()) == (0, "first\nlast\n")
            assert given.output("stderr") == "oops\n"
            assert _runs(runs) == 1, "the command did not run a second time"
            async with await served.client() as later:
                fresh = await later.run("c", [PY, "-c", COUNTED, str(runs)], run="R3", collect=["R1"])
            assert fresh.result.get("collected") is None and _runs(runs) == 2

    arun(scenario(), 60)


def test_an_answer_read_is_kept_only_a_short_while_in_memory(tmp_path: Path) -> None:
    """A caller that closed the connection cleanly read its answer, which is not the same as recording it (a
    work-horse thawed after its worker lost the queue reads its answer and has it refused, just before its
    successor asks): it stays collectable for READ_GRACE seconds, in memory only, never on disk."""
    runs, kept_dir = tmp_path / "runs", tmp_path / "kept"

    async def scenario() -> None:
        async with serving(kept_dir=kept_dir) as served:
            async with await served.client() as clean:
                assert (await clean.run("a", [PY, "-c", COUNTED, str(runs)], run="R1")).result["exit_code"] == 0
            await eventually(lambda: not served.handler.sessions, 10, what="the session to end")
            assert len(served.handler.kept) == 0, "nothing kept unread"
            async with await served.client() as successor:
                given = await successor.run("b", [PY, "-c", COUNTED, str(runs)], run="R2", collect=["R1"])
            assert given.result["collected"] == "R1" and _runs(runs) == 1
        assert not kept_dir.exists() or not list(kept_dir.glob("*.json"))

    arun(scenario(), 60)


def test_read_outcomes_expire_after_their_grace_and_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    kept = KeptOutcomes()
    for name in [f"R{i}" for i in range(READ_MOST + 1)]:
        kept.keep(name, _result(), OutputTail())
        kept.delivered(name)
    assert kept.collect(["R0"]) is None, "the oldest read one went first"
    assert kept.collect([f"R{READ_MOST}"]) is not None
    later = time.time() + READ_GRACE + 1
    monkeypatch.setattr(time, "time", lambda: later)
    assert kept.collect(["R1"]) is None, "past its grace"


def test_a_run_stopped_with_its_connection_has_no_outcome_to_give(tmp_path: Path) -> None:
    """A run that did not reach its end (its caller vanished mid-run, so it was stopped) is not kept."""
    runs = tmp_path / "runs"
    slow = COUNTED.replace('print("last", flush=True)', 'import time; time.sleep(60); print("last")')

    async def scenario() -> None:
        async with serving() as served:
            cut = await served.client()
            await cut.execute("a", [PY, "-c", slow, str(runs)], run="R1")
            await cut.read_until_output("a", "first\n")
            cut.connection.transport.abort()
            await eventually(lambda: not served.handler.sessions, 15, what="the run to be stopped")
            assert len(served.handler.kept) == 0

    arun(scenario(), 60)


def _result() -> ExecuteResult:
    return ExecuteResult(0, None, False, False, 1.0, 1, 0)


def test_kept_outcomes_expire_are_bounded_and_keep_the_output_tail() -> None:
    tail = OutputTail(limit=10)
    for chunk in ("aaaa", "bbbb", "cccc", "dd"):
        tail.add("stdout", chunk)
    assert [data for _, data in tail.frames] == ["bbbb", "cccc", "dd"] and tail.size == 10
    big = OutputTail(limit=3)
    big.add("stdout", "0123456789")
    assert [data for _, data in big.frames] == ["0123456789"], "one frame is always kept whole"

    kept = KeptOutcomes(keep_for=60, most=2)
    for name in ("R1", "R2", "R3"):
        kept.keep(name, _result(), OutputTail())
    assert kept.collect(["R1"]) is None, "the oldest went first"
    assert kept.collect(["R9", "R2"])[0] == "R2" and kept.collect(["R2"]) is None
    kept.delivered("R3")
    assert len(kept) == 0
    gone = KeptOutcomes(keep_for=0)
    gone.keep("R1", _result(), OutputTail())
    assert gone.collect(["R1"]) is None, "past its time"


def test_an_unread_outcome_outlives_its_handler_on_disk_and_is_given_back_by_the_next(tmp_path: Path) -> None:
    """The handler is killed after a run ended unread (its caller cut off): the outcome was also written to a
    private directory a moment after the end, and the restarted handler gives it back; nothing runs twice."""
    runs, kept_dir = tmp_path / "runs", tmp_path / "config" / "kept"

    async def first_handler() -> None:
        async with serving(kept_dir=kept_dir) as served:
            cut = await served.client()
            assert (await cut.run("a", [PY, "-c", COUNTED, str(runs)], run="R1")).result["exit_code"] == 0
            cut.connection.transport.abort()
            await eventually(lambda: list(kept_dir.glob("*.json")), 10, what="the unread outcome on disk")
        # Leaving `serving` stops this handler, as a SIGKILL would as far as its memory goes.

    async def second_handler() -> None:
        async with serving(kept_dir=kept_dir) as served, await served.client() as again:
            given = await again.run("b", [PY, "-c", COUNTED, str(runs)], run="R2", collect=["R1"])
            assert given.result["collected"] == "R1" and given.output() == "first\nlast\n"
        assert not list(kept_dir.glob("*.json")), "given back once, then gone (R2's answer was read)"

    arun(first_handler(), 60)
    assert oct(kept_dir.stat().st_mode & 0o777) == "0o700"
    assert all(oct(path.stat().st_mode & 0o777) == "0o600" for path in kept_dir.glob("*.json"))
    arun(second_handler(), 60)
    assert _runs(runs) == 1


def test_an_answer_read_at_once_never_touches_the_disk(tmp_path: Path) -> None:
    runs, kept_dir = tmp_path / "runs", tmp_path / "kept"

    async def scenario() -> None:
        async with serving(kept_dir=kept_dir) as served:
            for name in ("R1", "R2", "R3"):
                async with await served.client() as client:
                    await client.run(name, [PY, "-c", COUNTED, str(runs)], run=name)
            await eventually(lambda: not served.handler.sessions and not len(served.handler.kept), 10, what="reads")
            await asyncio.sleep(PERSIST_AFTER + 0.5)  # past the moment an unread one would be written
        assert not kept_dir.exists() or not list(kept_dir.glob("*.json"))

    arun(scenario(), 60)


def test_a_collect_only_request_gives_back_a_kept_outcome_or_runs_nothing(tmp_path: Path) -> None:
    runs = tmp_path / "runs"

    async def scenario() -> None:
        async with serving() as served:
            cut = await served.client()
            assert (await cut.run("a", [PY, "-c", COUNTED, str(runs)], run="R1")).result["exit_code"] == 0
            cut.connection.transport.abort()
            await eventually(lambda: not served.handler.sessions, 10, what="the cut-off session to end")
            async with await served.client() as client:
                argv = [PY, "-c", COUNTED, str(runs)]
                given = await client.run("b", argv, run="R2", collect=["R1"], collect_only=True)
                nothing = await client.run("c", argv, run="R3", collect=["R9"], collect_only=True)
            assert given.result["collected"] == "R1" and given.output() == "first\nlast\n"
            assert nothing.error["code"] == NOTHING_KEPT and "nothing was run" in nothing.error["message"]
            assert _runs(runs) == 1

    arun(scenario(), 60)
