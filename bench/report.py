"""Figures, the table printed at the end, and the JSON written beside it."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Figure:
    """One measured figure: ours against a same-run baseline, and the target it must meet.

    ``target`` applies to ``ours`` (``target_on="ours"``) or to ours/baseline
    (``target_on="ratio"``); ``higher_is_better`` says which side of it passes.
    A figure without a target is informational and neither passes nor fails.
    """

    section: str
    name: str
    unit: str
    ours: float | None
    baseline: float | None = None
    baseline_name: str = ""
    target: float | None = None
    target_on: str = "ours"
    higher_is_better: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.ours is None or not self.baseline:
            return None
        return self.ours / self.baseline

    @property
    def passed(self) -> bool | None:
        if self.target is None:
            return None
        value = self.ratio if self.target_on == "ratio" else self.ours
        if value is None:
            return False
        return value >= self.target if self.higher_is_better else value <= self.target

    def target_text(self) -> str:
        if self.target is None:
            return "—"
        op = "≥" if self.higher_is_better else "≤"
        if self.target_on == "ratio":
            return f"ratio {op} {_num(self.target)}"
        return f"{op} {_num(self.target)} {self.unit}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(ratio=self.ratio, passed=self.passed, target_text=self.target_text())
        return data


def _num(value: float | None) -> str:
    if value is None:
        return "—"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e6:
        return f"{value / 1e6:.2f} M"
    if magnitude >= 1e4:
        return f"{value / 1e3:.1f} k"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def verdict(figure: Figure) -> str:
    passed = figure.passed
    return "—" if passed is None else ("PASS" if passed else "FAIL")


def table(figures: list[Figure]) -> str:
    """A Markdown table (readable as plain text too) of every figure."""
    header = ("figure", "ours", "baseline", "ratio", "target", "result")
    rows = [
        (
            f"{f.name} ({f.unit})",
            _num(f.ours),
            f"{_num(f.baseline)} ({f.baseline_name})" if f.baseline is not None else "—",
            f"{f.ratio:.2f}" if f.ratio is not None else "—",
            f.target_text(),
            verdict(f),
        )
        for f in figures
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out.extend(line(row) for row in rows)
    return "\n".join(out)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    mem_kb = 0
    try:
        with open("/proc/meminfo") as f:
            mem_kb = int(next(ln for ln in f if ln.startswith("MemTotal")).split()[1])
    except (OSError, StopIteration, ValueError):
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "load_avg_at_start": os.getloadavg(),
        "git_commit": _git_commit(),
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
