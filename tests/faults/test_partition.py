"""A single worker cut off mid-task, at default settings (30 s lock TTL, redis-py's and websockets' own
keepalives): the attempt is recorded as interrupted, runs again, and the queue goes on within seconds of the
restore. Shorter, scaled-down partitions are in test_recovery.py; these are the lengths users meet."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest

from runner.stack import find_redis_server
from tests.handler.helpers import ROOT
from tests.support.netns import Network
from tests.support.processes import first_line, redis_with_password, stop_all, wait_until

PY = sys.executable

# The first attempt marks that it ran, then prints until it is stopped; a later attempt ends at once.
ONCE_THEN_QUICK = """
import os, sys, time
marker = sys.argv[1]
if os.path.exists(marker):
    print("second attempt", flush=True)
    sys.exit(0)
open(marker, "w").close()
for i in range(1200):
    print(f"tick {i}", flush=True)
    time.sleep(0.5)
"""

# Submits the tasks, prints their ids, then each result with the wall-clock time it arrived.
SUBMIT_AND_TIME = """
import sys, time, orjson
from runner.client import Runner
runner = Runner(redis_url=sys.argv[1], queue=sys.argv[2])
ids = [runner.submit(agent="command", argv=argv).id for argv in orjson.loads(sys.argv[3])]
print(orjson.dumps(ids).decode(), flush=True)
for task_id in ids:
    result = runner.handle(task_id).result(timeout=float(sys.argv[4])).to_dict()
    print(orjson.dumps({"at": time.time(), "result": result}).decode(), flush=True)
"""

# 120 s is the cut that left the work-horse spinning (redis-py's keepalive kills the idle subscription after
# about 45 s); 45 s, right at that edge, runs too with CCX_LONG_FAULTS=1 (and in `python -m bench chaos`).
LENGTHS = [45, 120] if os.environ.get("CCX_LONG_FAULTS") == "1" else [120]


@pytest.mark.timeout(420)
@pytest.mark.parametrize("seconds", LENGTHS)
def test_a_single_worker_cut_off_mid_task_at_default_settings_recovers_within_seconds(
    tmp_path: Path, seconds: int
) -> None:
    """Machine A has Redis and the handler, machine B the only worker, all at their defaults. B is cut off
    for ``seconds`` while a task runs. The handler stops the run when its keepalive gives up; the work-horse
    notices the dead connection by its own keepalive and never spins; after the restore the attempt is
    recorded as interrupted, the task runs again, and the task behind it runs, within seconds."""
    with Network() as net:
        a, b = net.machine("a"), net.machine("b")
        # The simulated machines share a private bridge of the test's own: plain redis:// with a password is fine.
        base = {**{k: v for k, v in os.environ.items() if not k.startswith("CCX_")}, "CCX_CONFIG_DIR": str(tmp_path),
                "CCX_ALLOW_INSECURE": "1"}  # fmt: skip
        token, password = "tok-" + uuid.uuid4().hex, uuid.uuid4().hex
        handler = worker = redis_proc = submitter = None
        try:
            redis_proc = redis_with_password(
                a.argv(find_redis_server(), "-", "--port", "6390", "--bind", a.address, "--save", "",
                       "--appendonly", "no", "--dir", str(tmp_path)),
                password,
            )  # fmt: skip
            redis_url = f"redis://:{password}@{a.address}:6390/0"
            handler = subprocess.Popen(
                a.argv(PY, "-m", "handler", "--host", a.address, "--port", "0", "--allow", "*"),
                env={**base, "CCX_HANDLER_TOKEN": token}, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL, cwd=ROOT,
            )  # fmt: skip
            handler_url = first_line(handler).split(" listening on ", 1)[1].split()[0]
            worker_log = (tmp_path / "worker.log").open("wb")
            worker = subprocess.Popen(
                b.argv(PY, "-m", "runner.cli", "worker"),
                env={**base, "CCX_REDIS_URL": redis_url, "CCX_HANDLER_URL": handler_url, "CCX_HANDLER_TOKEN": token,
                     "CCX_ALLOW_INSECURE": "1", "CCX_QUEUE": "remote"},
                stdout=subprocess.PIPE, stderr=worker_log, stdin=subprocess.DEVNULL, cwd=ROOT,
            )  # fmt: skip
            worker_log.close()
            assert "serving queue 'remote'" in first_line(worker, 60)
            marker = tmp_path / "ran-once"
            tasks = [[PY, "-c", ONCE_THEN_QUICK, str(marker)], ["echo", "next ran"]]
            submitter = subprocess.Popen(
                a.argv(PY, "-c", SUBMIT_AND_TIME, redis_url, "remote", orjson.dumps(tasks).decode(), "400"),
                env=base, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
            )  # fmt: skip
            first_id = orjson.loads(first_line(submitter, 60))[0]
            wait_until(marker.exists, 60, what="the first task to start")
            net.unplug(b)
            time.sleep(seconds)  # the fault itself: B is cut off
            net.plug(b)
            restored = time.time()
            out, err = submitter.communicate(timeout=240)
            lines = [orjson.loads(line) for line in out.splitlines()]
            results = [line["result"] for line in lines]
            assert [r["success"] for r in results] == [True, True], (results, err)
            assert results[0]["output"] == "second attempt\n"
            assert results[1]["output"] == "next ran\n"
            attempts = results[0]["attempts"]
            assert [attempt["kind"] for attempt in attempts] == ["interrupted"], attempts
            assert "work-horse" not in (attempts[0]["error"] or ""), attempts
            # Within seconds of the restore, not after minutes of a spinning work-horse.
            assert lines[1]["at"] - restored < 25, (lines[1]["at"] - restored, first_id)
            logged = (tmp_path / "worker.log").read_text()
            assert "died" not in logged, logged
            assert worker.poll() is None, "the worker kept serving"
        finally:
            stop_all(submitter, worker, handler, redis_proc)
            log_file = tmp_path / "worker.log"
            print(log_file.read_text()[-6000:] if log_file.exists() else "")  # shown when the test fails
