"""Markdown report of a :class:`~lenetlab.experiments.base.Result`: claims first, then tables and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lenetlab.fileio import atomic_write_bytes

VERDICT = {True: "supported", False: "NOT supported", None: "inconclusive"}


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no rows)\n"
    cols = list(rows[0])
    for r in rows[1:]:
        cols += [c for c in r if c not in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def render(result) -> str:
    parts = [f"# {result.experiment}: {result.paper}\n",
             f"Mode: {result.mode}. Wall time: {result.wall_seconds:.0f} s.\n",
             "## Claims\n",
             markdown_table([{"claim": c.name, "paper": c.statement, "measured": c.measured,
                              "verdict": VERDICT[c.supported]} for c in result.claims])]
    for name, rows in result.tables.items():
        parts += [f"\n## {name}\n", markdown_table(rows)]
    if result.figures:
        parts.append("\n## Figures\n")
        parts += [f"![{Path(f).stem}]({f})\n" for f in result.figures]
    if result.notes:
        parts.append("\n## Notes\n")
        parts += [f"- {n}\n" for n in result.notes]
    parts.append(f"\n## Config\n\n```\n{result.config}\n```\n")
    return "\n".join(parts)


def write_report(result, out: Path) -> Path:
    path = out / "report.md"
    atomic_write_bytes(path, render(result).encode())
    return path
