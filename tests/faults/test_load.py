"""Load: many tasks from concurrent submitters, each run exactly once, in FIFO order per submitter.

Sized to finish in seconds on a busy 2-core machine (400 tasks); the same check at
10,000 tasks is ``CCX_LOAD_TASKS=10000 ./scripts/test tests/faults/test_load.py``
(about 5 minutes on 2 cores), and ``python -m bench --only scale`` measures the rates.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

from runner.client import Runner
from runner.stack import LocalStack

TASKS = int(os.environ.get("CCX_LOAD_TASKS", "400"))
SUBMITTERS = 8

SUBMITTER = """
import sys, orjson
from runner.client import Runner
redis_url, queue, who, count, marks = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
runner = Runner(redis_url=redis_url, queue=queue)
ids = [runner.submit(agent="command", argv=["sh", "-c", f'echo "$0" >> {marks}', f"{who}-{n}"]).id for n in range(count)]
print(orjson.dumps(ids).decode())
"""


def test_many_tasks_from_eight_submitters_each_run_exactly_once(
    stack: LocalStack, runner: Runner, tmp_path: Path
) -> None:
    """Every task runs once (the child appends its name to a file), in FIFO order per submitter; all results readable."""
    marks = tmp_path / "marks"
    per = TASKS // SUBMITTERS
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SUBMITTER, stack.redis_url or "", stack.queue, str(who), str(per), str(marks)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for who in range(SUBMITTERS)
    ]
    ids: dict[int, list[str]] = {}
    for who, proc in enumerate(procs):
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        ids[who] = orjson.loads(out)
    every = [task_id for who in ids for task_id in ids[who]]
    assert len(set(every)) == per * SUBMITTERS
    # Wait for the last submitted task of each submitter; FIFO means everything before it ran too.
    for who in ids:
        assert runner.handle(ids[who][-1]).result(timeout=60 + TASKS * 0.2).success
    ran = marks.read_text().split()
    assert len(ran) == len(set(ran)) == per * SUBMITTERS, "a task ran twice or not at all"
    for who in ids:
        own = [name for name in ran if name.startswith(f"{who}-")]
        assert own == [f"{who}-{n}" for n in range(per)], f"submitter {who}'s tasks ran out of order"
    records = runner.redis.pipeline()
    for task_id in every:
        records.hget(f"ccx:task:{task_id}:info", "result")
    results = [orjson.loads(raw) for raw in records.execute()]
    assert all(result["success"] for result in results)
