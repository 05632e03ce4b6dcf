"""Running one child process: spawn, drain, coalesce, time out, kill the tree.

This module knows processes, not agents and not sockets. A :class:`ProcessRun`
spawns an argv list in a new session, reads stdout and stderr concurrently in
large chunks, decodes them incrementally (a UTF-8 character split across two
reads is never mangled), and hands coalesced text to an ``emit`` coroutine:
one call per frame, never one per line. When ``emit`` is slow the pipes stop
being read, so memory stays bounded and the child blocks on a full pipe.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import fcntl
import logging
import os
import subprocess
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from handler import proctree
from handler.allowlist import resolve
from handler.protocol import (
    SPAWN_FAILED,
    STDERR,
    STDOUT,
    ExecuteParams,
    ExecuteResult,
    ProtocolError,
)

log = logging.getLogger("ccx.handler")

Emit = Callable[[str, int, str], Awaitable[None]]
"""``emit(stream, seq, text)``: deliver one output frame; may block (backpressure)."""

READ_SIZE = 512 * 1024
"""Bytes per pipe read: at most one frame's worth (see RunLimits.frame_chars), so no frame exceeds it."""
PIPE_SIZE = 1 << 20
RECENT_RUN = 5.0
"""Runs shorter than this (seconds) look for leftovers among recently allocated pids only."""


@dataclass(frozen=True)
class RunLimits:
    """Tunables of a run. The defaults suit agent CLIs and bulk output alike."""

    grace: float = 5.0
    """Seconds between SIGTERM and SIGKILL when a run is stopped."""
    frame_chars: int = 512 * 1024
    """Most characters in one output frame (kept well under the WebSocket message limit)."""
    buffered_chars: int = 2 * 1024 * 1024
    """Characters waiting to be sent before the pipes stop being read."""
    drain_after_exit: float = 2.0
    """Seconds to wait for the pipes to close once every process of the run is gone."""


class Check(Protocol):
    """Returns the path to execute for ``argv[0]`` (given the cwd, env and whole argv), or raises ProtocolError."""

    def __call__(
        self, argv0: str, cwd: str | None, env: Mapping[str, str | None] | None, *, argv: Sequence[str] = ()
    ) -> str: ...


def _any_executable(
    argv0: str, cwd: str | None, env: Mapping[str, str | None] | None, *, argv: Sequence[str] = ()
) -> str:
    return resolve(argv0, cwd)


def child_environment(overrides: dict[str, str | None] | None, run_token: str) -> dict[str, str]:
    """The handler's environment, with ``overrides`` merged over it (None removes a key)."""
    env = dict(os.environ)
    for key, value in (overrides or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    env[proctree.MARKER_VAR] = run_token
    return env


class _Outbox:
    """Text read from the pipes, waiting to be sent; merges adjacent chunks of one stream.

    ``put`` is synchronous (it runs in the pipe-readable callback) and returns
    False when the outbox is full: the caller then stops reading until
    ``on_room`` is called back, which is how backpressure reaches the child.
    """

    def __init__(self, limits: RunLimits, on_room: Callable[[], None]) -> None:
        self._chunks: deque[tuple[str, str]] = deque()
        self._pending = 0
        self._limits = limits
        self._on_room = on_room
        self._has_data = asyncio.Event()
        self.closed = False
        self.discarding = False

    @property
    def has_room(self) -> bool:
        return self.discarding or self._pending < self._limits.buffered_chars

    def put(self, stream: str, text: str) -> bool:
        if text and not self.discarding:
            self._chunks.append((stream, text))
            self._pending += len(text)
            self._has_data.set()
        return self.has_room

    def close(self) -> None:
        self.closed = True
        self._has_data.set()

    def discard(self) -> None:
        """The receiver is gone: drop output from now on instead of holding the readers."""
        self.discarding = True
        self._chunks.clear()
        self._pending = 0
        self._on_room()

    async def take(self) -> tuple[str, str] | None:
        """The next frame (stream, text), or None once closed and empty."""
        while not self._chunks:
            if self.closed:
                return None
            self._has_data.clear()
            await self._has_data.wait()
        was_full = not self.has_room
        stream, text = self._chunks.popleft()
        if self._chunks and self._chunks[0][0] == stream:
            parts = [text]
            size = len(text)
            limit = self._limits.frame_chars
            while self._chunks and self._chunks[0][0] == stream and size + len(self._chunks[0][1]) <= limit:
                part = self._chunks.popleft()[1]
                parts.append(part)
                size += len(part)
            text = "".join(parts)
        self._pending -= len(text)
        if was_full and self.has_room:
            self._on_room()
        return stream, text


class _PipeReader:
    """Reads one pipe from the event loop's readiness callback, decoding incrementally."""

    def __init__(self, fd: int, stream: str, outbox: _Outbox) -> None:
        self.fd = fd
        self.stream = stream
        self.bytes = 0
        self.eof: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outbox = outbox
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._loop = asyncio.get_running_loop()
        self._reading = False
        os.set_blocking(fd, False)
        with contextlib.suppress(OSError):  # a larger pipe means fewer wake-ups per MB
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)

    def resume(self) -> None:
        if not self._reading and not self.eof.done():
            self._reading = True
            self._loop.add_reader(self.fd, self._on_readable)

    def pause(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self.fd)

    def _on_readable(self) -> None:
        try:
            chunk = os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            self.bytes += len(chunk)
            if not self._outbox.put(self.stream, self._decoder.decode(chunk)):
                self.pause()
            return
        self._outbox.put(self.stream, self._decoder.decode(b"", final=True))
        self.close()

    def close(self) -> None:
        """Stop reading and close the pipe, once: a second os.close() could close an fd number
        the process has since reused for something else (another client's socket)."""
        self.pause()
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            with contextlib.suppress(OSError):
                os.close(fd)
        if not self.eof.done():
            self.eof.set_result(None)


class ProcessRun:
    """One child process and everything it starts, from spawn to the last descendant's death."""

    def __init__(
        self,
        params: ExecuteParams,
        emit: Emit,
        limits: RunLimits | None = None,
        check: Check | None = None,
    ) -> None:
        self.params = params
        self._check = check or _any_executable
        self.limits = limits or RunLimits()
        self._emit = emit
        self._token = proctree.new_run_token()
        self._cancel_requested = asyncio.Event()
        self._outbox = _Outbox(self.limits, self._resume_readers)
        self._readers: list[_PipeReader] = []
        self.popen: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    @property
    def cancel_requested(self) -> asyncio.Event:
        """Set once :meth:`cancel` was called, whether or not the process has started."""
        return self._cancel_requested

    def not_started_result(self) -> ExecuteResult:
        """The outcome of a run cancelled while it still waited for its turn."""
        return ExecuteResult(None, None, False, True, 0.0, 0, 0)

    def cancel(self) -> None:
        """Stop the run (SIGTERM, grace, SIGKILL); :meth:`wait` then reports ``cancelled``."""
        self._cancel_requested.set()

    def _resume_readers(self) -> None:
        for reader in self._readers:
            reader.resume()

    async def start(self) -> int:
        """Spawn the process; raise :class:`ProtocolError` when it cannot start."""
        params = self.params
        # Checked again at start, not only on arrival: a queued run may wait for hours.
        executable = self._check(params.argv[0], params.cwd, params.env, argv=params.argv)
        env = child_environment(params.env, self._token)
        if params.cwd is not None and not os.path.isdir(params.cwd):
            raise ProtocolError(
                SPAWN_FAILED, f"Could not start '{params.argv[0]}': working directory '{params.cwd}' does not exist."
            )
        try:
            self.popen = subprocess.Popen(
                params.argv,
                executable=executable,
                stdin=subprocess.PIPE if params.stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=params.cwd,
                env=env,
                start_new_session=True,
                bufsize=0,
            )
        except (OSError, ValueError) as exc:  # ValueError: e.g. a NUL inside an environment value
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ProtocolError(SPAWN_FAILED, f"Could not start '{params.argv[0]}': {reason}.") from None
        self.started_at = time.monotonic()
        assert self.popen.stdout is not None and self.popen.stderr is not None
        try:
            # Detach the fds from the Popen file objects: the readers own and close them.
            for pipe, stream in ((self.popen.stdout, STDOUT), (self.popen.stderr, STDERR)):
                self._readers.append(_PipeReader(os.dup(pipe.fileno()), stream, self._outbox))
        except OSError as exc:  # e.g. out of file descriptors: never leave the child unsupervised
            await proctree.kill_run(self._token, self.popen.pid, 0)
            self.popen.wait()
            for reader in self._readers:
                reader.close()
            raise ProtocolError(SPAWN_FAILED, f"Could not start '{params.argv[0]}': {exc.strerror or exc}.") from None
        finally:
            self.popen.stdout.close()
            self.popen.stderr.close()
        log.info("run started argv0=%s pid=%d", os.path.basename(params.argv[0]), self.popen.pid)
        return self.popen.pid

    async def _feed_stdin(self) -> None:
        assert self.popen is not None and self.popen.stdin is not None
        stdin = self.popen.stdin
        data = memoryview((self.params.stdin or "").encode())
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError):  # the child closed its stdin or died: nothing more to give
            while data:  # an unbuffered pipe write may be partial
                written = await loop.run_in_executor(None, stdin.write, data)
                data = data[written or 0 :]
        with contextlib.suppress(OSError):
            stdin.close()

    async def _send(self) -> None:
        seq = 0
        try:
            while (frame := await self._outbox.take()) is not None:
                await self._emit(frame[0], seq, frame[1])
                seq += 1
        except Exception as exc:
            # Output that cannot be delivered must not keep running unwatched: stop the run,
            # and keep the pipes drained meanwhile so the child is not stuck on a full pipe.
            log.warning("output could not be delivered (%s); stopping the run", exc)
            self._outbox.discard()
            self._cancel_requested.set()

    async def _exited(self) -> None:
        """Wait for the main process to exit (not for its pipes to close), without reaping it.

        Until it is reaped its pid, which is also the run's process-group and session id,
        cannot be reused, so the tree kill that may follow can never reach an unrelated
        process. :meth:`wait` reaps it last.
        """
        popen = self.popen
        assert popen is not None
        loop = asyncio.get_running_loop()
        try:
            pidfd = os.pidfd_open(popen.pid)
        except OSError:  # no pidfd (old kernel, or out of fds): wait in a thread, still without reaping
            await loop.run_in_executor(None, os.waitid, os.P_PID, popen.pid, os.WEXITED | os.WNOWAIT)
            return
        exited: asyncio.Future[None] = loop.create_future()
        try:
            loop.add_reader(pidfd, lambda: exited.done() or exited.set_result(None))
            try:
                await exited
            finally:
                loop.remove_reader(pidfd)
        finally:
            os.close(pidfd)

    async def _drain_pipes(self) -> None:
        """Read what the ended tree left in the pipes, up to EOF.

        A receiver slower than ``drain_after_exit`` holds the readers back; that is no reason
        to drop output already written. Give up only after a window in which the readers were
        free but nothing came (a process we could not find holds a pipe open), or once more
        came than the pipes could have held (such a process is still writing).
        """
        eofs = [reader.eof for reader in self._readers]
        read_at_exit = sum(reader.bytes for reader in self._readers)
        while True:
            read_before = sum(reader.bytes for reader in self._readers)
            held_back = not self._outbox.has_room
            _, pending = await asyncio.wait(eofs, timeout=self.limits.drain_after_exit)
            read_now = sum(reader.bytes for reader in self._readers)
            if not pending or not (held_back or read_now > read_before):
                return
            if read_now - read_at_exit > len(self._readers) * PIPE_SIZE:
                return

    async def wait(self) -> ExecuteResult:
        """Relay output until the process and its whole tree are gone; return the outcome."""
        popen = self.popen
        assert popen is not None
        pid = popen.pid
        self._resume_readers()
        helpers: list[asyncio.Task[None]] = []
        if self.params.stdin is not None:
            helpers.append(asyncio.create_task(self._feed_stdin()))
        sender = asyncio.create_task(self._send())
        exited = asyncio.create_task(self._exited())
        cancelled_wait = asyncio.create_task(self._cancel_requested.wait())
        timed_out = cancelled = False
        try:
            await asyncio.wait(
                {exited, cancelled_wait}, timeout=self.params.timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if not exited.done():
                cancelled = self._cancel_requested.is_set()
                timed_out = not cancelled
                await proctree.kill_run(self._token, pid, self.limits.grace)
                await exited
            else:
                # The main process is done; a run ends with its whole tree. Its children were
                # re-parented when it exited, so they are found by the run's marker.
                recent = time.monotonic() - self.started_at < RECENT_RUN
                if proctree.find_run_processes(self._token, pid, recent_only=recent):
                    await proctree.kill_run(self._token, pid, self.limits.grace, recent_only=recent)
            await self._drain_pipes()
            for reader in self._readers:  # a process we could not find still holds a pipe open
                reader.close()
            self._outbox.close()
            await sender
        finally:
            cancelled_wait.cancel()
            for task in (*helpers, sender, exited):
                if not task.done():
                    task.cancel()
            for reader in self._readers:
                reader.close()
            if popen.poll() is None:  # reaps the main process once its tree is gone
                await proctree.kill_run(self._token, pid, 0)
                popen.wait()
        return self._ended(timed_out, cancelled)

    def _ended(self, timed_out: bool, cancelled: bool) -> ExecuteResult:
        """The outcome of the run whose process is reaped, logged in one line."""
        assert self.popen is not None
        returncode = self.popen.returncode
        result = ExecuteResult(
            exit_code=returncode if returncode >= 0 else None,
            signal=-returncode if returncode < 0 else None,
            timed_out=timed_out,
            cancelled=cancelled,
            duration_ms=round((time.monotonic() - self.started_at) * 1000, 3),
            stdout_bytes=self._readers[0].bytes,
            stderr_bytes=self._readers[1].bytes,
        )
        log.info(
            "run ended argv0=%s pid=%d exit=%s signal=%s timed_out=%s cancelled=%s duration_ms=%.1f stdout_bytes=%d stderr_bytes=%d",
            os.path.basename(self.params.argv[0]),
            self.popen.pid,
            result.exit_code,
            result.signal,
            timed_out,
            cancelled,
            result.duration_ms,
            result.stdout_bytes,
            result.stderr_bytes,
        )
        return result
