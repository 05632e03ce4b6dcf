"""What the dashboard reads from Redis: the queue as the page shows it, task records, progress.

All reads are plain Redis commands on the keys of docs/events.md; nothing here
writes. A finished task's result can hold a megabyte of output, so its summary
(exit status, duration, cost) is read once and kept: results never change.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

import orjson
import redis.asyncio

from runner import clock, keys, queue_state, schedules
from runner.agents import AGENTS
from runner.spec import title
from runner.vocabulary import END_STATUSES, Status

QUEUED_SHOWN = 200
"""Queued tasks listed (the count says how many more wait)."""
INDEX_SCANNED = 300
"""Newest tasks of the index looked at for the running, deferred and recent lists."""
RECENT_SHOWN = 30
RESULT_OUTPUT_SHOWN = 64 * 1024
"""Characters of a result's ``output`` sent to the task page (the tail); the log has everything."""
MASK = "***"
"""What the dashboard shows instead of the values of a spec's ``env``."""

TASK_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
"""What a task id may look like (they are UUIDs; this only keeps junk out of key names)."""

_ROW_FIELDS = ("status", "spec", "submitted_at", "started_at", "ended_at", "queue", "after", "scheduled_for")


def _has_transcript(agent: object) -> bool:
    known = AGENTS.get(agent) if isinstance(agent, str) else None
    return known is not None and known.transcript() is not None


def _costs(costs_raw: list[bytes | None], state_raw: dict[bytes, bytes]) -> dict[str, float]:
    return {
        "total": float(costs_raw[0] or 0),
        "today": float(costs_raw[1] or 0),
        **({"budget_per_day": float(state_raw[b"budget_per_day"])} if state_raw.get(b"budget_per_day") else {}),
    }


def _pause(raw: dict[bytes, bytes]) -> dict[str, Any] | None:
    """The queue's pause for the page (None: running): its reason and, when it ends by itself, when."""
    state = {key.decode(): value.decode() for key, value in raw.items()}
    if not state.get("kind"):
        return None
    until = float(state["until"]) if state.get("until") else None
    return {"kind": state["kind"], "reason": state.get("reason", ""), "until": clock.iso(until) if until else None}


def _text(value: bytes | None) -> str | None:
    return value.decode(errors="replace") if value is not None else None


def _schedules(raws: list[bytes]) -> list[dict[str, Any]]:
    """The queue's recurring schedules (runner/schedules.py's entries) for the page, soonest first."""
    return [
        {
            "id": entry.id,
            "cron": entry.cron,
            "agent": entry.spec.get("agent", "?"),
            "title": title(entry.spec),
            "next_at": clock.iso(entry.next_at),
            "last_at": clock.iso(entry.last_at) if entry.last_at else None,
            "last_task": entry.last_task
            if isinstance(entry.last_task, str) and TASK_ID.match(entry.last_task)
            else None,
        }
        for entry in schedules.loaded(raws)
    ]


def result_summary(result: dict[str, Any]) -> dict[str, Any]:
    """The fields of a result the queue view shows."""
    agent = result.get("agent") if isinstance(result.get("agent"), dict) else {}
    cost = agent.get("total_cost_usd")
    error = result.get("error")
    return {
        "success": bool(result.get("success")),
        "exit_code": result.get("exit_code"),
        "signal": result.get("signal"),
        "timed_out": bool(result.get("timed_out")),
        "cancelled": bool(result.get("cancelled")),
        "error": error[:300] if isinstance(error, str) else None,
        "duration_ms": result.get("duration_ms"),
        "cost_usd": cost if isinstance(cost, (int, float)) else None,
    }


class Reader:
    """Reads the dashboard's views from one Redis (a client returning bytes) for one queue."""

    def __init__(self, client: redis.asyncio.Redis, queue: str, cache_size: int = 5000) -> None:
        self.client = client
        self.queue = queue
        self._summaries: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._cache_size = cache_size

    async def rows(self, task_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The queue view's row for each known task id (unknown or expired ids are left out)."""
        if not task_ids:
            return {}
        async with self.client.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hmget(keys.info_key(task_id), _ROW_FIELDS)
            replies = await pipe.execute()
        rows: dict[str, dict[str, Any]] = {}
        ended: list[str] = []
        for task_id, values in zip(task_ids, replies, strict=True):
            status, spec_raw, submitted, started, ended_at, queue, after, scheduled_for = values
            if spec_raw is None:
                continue
            try:
                spec = orjson.loads(spec_raw)
            except orjson.JSONDecodeError:
                spec = {}
            rows[task_id] = {
                "id": task_id,
                "queue": _text(queue),
                "status": _text(status) or "unknown",
                "agent": spec.get("agent", "?"),
                "title": title(spec),
                "submitted_at": _text(submitted),
                "after": _text(after),
                "started_at": _text(started),
                "ended_at": _text(ended_at),
                "scheduled_for": _text(scheduled_for),
                "result": None,
            }
            if rows[task_id]["status"] in END_STATUSES:
                ended.append(task_id)
        for task_id, summary in (await self._result_summaries(ended)).items():
            rows[task_id]["result"] = summary
        return rows

    async def _result_summaries(self, task_ids: list[str]) -> dict[str, dict[str, Any]]:
        missing = [task_id for task_id in task_ids if task_id not in self._summaries]
        if missing:
            async with self.client.pipeline(transaction=False) as pipe:
                for task_id in missing:
                    pipe.hget(keys.info_key(task_id), "result")
                raws = await pipe.execute()
            for task_id, raw in zip(missing, raws, strict=True):
                if raw is None:
                    continue
                self._summaries[task_id] = result_summary(orjson.loads(raw))
                if len(self._summaries) > self._cache_size:
                    self._summaries.popitem(last=False)
        return {task_id: self._summaries[task_id] for task_id in task_ids if task_id in self._summaries}

    async def snapshot(self) -> dict[str, Any]:
        """The queue view: running, queued (in the order they will run), deferred, scheduled (soonest first)
        and recently ended tasks, and the queue's recurring schedules."""
        (
            waiting_raw, waiting_total, newest_raw, started_raw, deferred_raw, worker, state_raw, costs_raw,
            later_raw, later_total, schedules_raw,
        ) = await self._read()  # fmt: skip
        waiting = [task_id.decode() for task_id in waiting_raw]
        later = [task_id.decode() for task_id in later_raw]
        recurring = _schedules(schedules_raw)
        last_tasks = [entry["last_task"] for entry in recurring if entry["last_task"]]
        # The running and deferred tasks may be older than the newest INDEX_SCANNED: RQ's registries find them.
        newest = (
            [t.decode() for t in started_raw] + [t.decode() for t in deferred_raw] + [t.decode() for t in newest_raw]
        )
        newest = list(dict.fromkeys(task_id.split(":", 1)[0] for task_id in newest))
        rows = await self.rows(list(dict.fromkeys(waiting + newest + later + last_tasks)))
        in_line = [rows[task_id] for task_id in waiting if task_id in rows and rows[task_id]["status"] == Status.QUEUED]
        listed = {row["id"] for row in in_line}
        # The record decides (a task ends, or joins the line, a moment before it leaves the sorted set).
        scheduled = [rows[t] for t in later if t in rows and rows[t]["status"] == Status.SCHEDULED]
        later_ids = {row["id"] for row in scheduled}
        # Recorded but not (or no longer) in RQ's list: just submitted, or being dequeued right now.
        others = [rows[t] for t in newest if t in rows and t not in listed and t not in later_ids]
        in_line += sorted((r for r in others if r["status"] == Status.QUEUED), key=lambda r: r["submitted_at"] or "")
        ended = [r for r in others if r["status"] in END_STATUSES]
        ended.sort(key=lambda r: r["ended_at"] or r["submitted_at"] or "", reverse=True)
        for entry in recurring:
            last = rows.get(entry["last_task"] or "")
            entry["last_status"] = last["status"] if last else None
        return {
            "queue": self.queue,
            "now": clock.now_iso(),
            "worker": _text(worker),
            "running": sorted(
                (r for r in others if r["status"] == Status.RUNNING), key=lambda r: r["started_at"] or ""
            ),
            "queued": in_line,
            "queued_total": max(int(waiting_total), len(in_line)),
            "deferred": await self._with_predecessors(
                sorted((r for r in others if r["status"] == Status.DEFERRED), key=lambda r: r["submitted_at"] or "")
            ),
            "scheduled": scheduled,
            # Beyond the ids read, the count includes cancelled tasks whose time has not come yet.
            "scheduled_total": len(scheduled) + max(0, int(later_total) - len(later)),
            "schedules": recurring,
            "recent": ended[:RECENT_SHOWN],
            "pause": _pause(state_raw),
            "costs": _costs(costs_raw, state_raw),
        }

    async def _read(self) -> list[Any]:
        """What the queue view needs, in one round trip."""
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.lrange(keys.rq_queue_key(self.queue), 0, QUEUED_SHOWN - 1)
            pipe.llen(keys.rq_queue_key(self.queue))
            pipe.zrevrange(keys.index_key(self.queue), 0, INDEX_SCANNED - 1)
            pipe.zrange(keys.rq_started_key(self.queue), 0, 9)
            pipe.zrange(keys.rq_deferred_key(self.queue), 0, QUEUED_SHOWN - 1)
            pipe.get(keys.lock_key(self.queue))
            pipe.hgetall(keys.queue_state_key(self.queue))
            pipe.hmget(keys.costs_key(self.queue), "total", f"day:{queue_state.today()}")
            pipe.zrange(keys.scheduled_key(self.queue), 0, QUEUED_SHOWN - 1)
            pipe.zcard(keys.scheduled_key(self.queue))
            pipe.hvals(keys.schedules_key(self.queue))
            return await pipe.execute()

    async def _with_predecessors(self, deferred: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each waiting task with the title and status of the task it waits for."""
        predecessors = await self.rows(sorted({row["after"] for row in deferred if row.get("after")}))
        for row in deferred:
            before = predecessors.get(row.get("after") or "")
            row["after_title"] = before["title"] if before else None
            row["after_status"] = before["status"] if before else None
        return deferred

    async def record(self, task_id: str) -> dict[str, Any] | None:
        """A task's record for its page: the result's output cut to its tail, the env's values masked."""
        raw = await self.client.hgetall(keys.info_key(task_id))
        if not raw or b"spec" not in raw:
            return None
        data = {key.decode(): value for key, value in raw.items()}
        result = orjson.loads(data["result"]) if "result" in data else None
        if result is not None:
            output = result.get("output")
            if isinstance(output, str) and len(output) > RESULT_OUTPUT_SHOWN:
                result["output"] = output[-RESULT_OUTPUT_SHOWN:]
                result["output_clipped"] = len(output)
        spec = orjson.loads(data["spec"])
        if isinstance(spec.get("env"), dict):  # values are often secrets (API keys): show the names only
            spec["env"] = {name: None if value is None else MASK for name, value in spec["env"].items()}
        return {
            "id": task_id,
            "queue": _text(data.get("queue")),
            "status": _text(data.get("status")),
            "spec": spec,
            "submitted_at": _text(data.get("submitted_at")),
            "started_at": _text(data.get("started_at")),
            "ended_at": _text(data.get("ended_at")),
            "scheduled_for": _text(data.get("scheduled_for")),
            "result": result,
            "log_key": keys.log_key(task_id),
            # Whether its log reads as a transcript (the agent says; the page offers "transcript / raw" then).
            "transcript": _has_transcript(spec.get("agent")),
            "webhook": orjson.loads(data["webhook"]) if data.get("webhook") else None,
        }

    async def progress(self, task_ids: list[str]) -> dict[str, dict[str, Any]]:
        """``ccx_progress`` (bytes, lines, frames, last_activity) from the RQ job of each running task."""
        if not task_ids:
            return {}
        async with self.client.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hget(keys.rq_job_key(task_id), "meta")
            metas = await pipe.execute()
        found: dict[str, dict[str, Any]] = {}
        for task_id, meta in zip(task_ids, metas, strict=True):
            try:
                progress = orjson.loads(meta).get("ccx_progress") if meta else None
            except (orjson.JSONDecodeError, AttributeError):
                progress = None
            if isinstance(progress, dict):
                found[task_id] = {k: progress.get(k) for k in ("bytes", "lines", "frames", "last_activity")}
        return found

    async def worker(self) -> str | None:
        return _text(await self.client.get(keys.lock_key(self.queue)))
