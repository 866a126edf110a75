"""The README's claims table, from the result folders committed here: one quick-mode run of every experiment and
the full-mode (``--full``) reports, newest last (a later full report of an experiment replaces an earlier one).
Folders named ``quick-*`` are quick mode: the first is the run of every experiment (its order is the table's), a
later one replaces the experiments it holds (a quick re-run after a change to one experiment); every other
folder is full mode.

    python docs/results/claims_table.py docs/results/quick-3894dff docs/results/full-f160779 docs/results/full-071e667

Prints a markdown table: experiment, claim, then seeds, test images, estimate [95% CI] and verdict of the
quick run, and the same of the full run where one exists ("quick only" where none does). Every number is read
from the folders' ``result.json`` and ``timings.json`` files (claims decided from clock readings are in the
latter); nothing is typed in by hand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _claims(folder: Path) -> dict[str, dict[str, dict]]:
    """experiment -> claim name -> claim record, for every experiment folder under ``folder``."""
    out: dict[str, dict[str, dict]] = {}
    for res in sorted(folder.glob("*/result.json")):
        rows = json.loads(res.read_text())["claims"]
        tim = res.with_name("timings.json")
        if tim.is_file():
            rows = rows + json.loads(tim.read_text()).get("claims", [])
        out[res.parent.name] = {c["name"]: c for c in rows}
    return out


def _order(folder: Path) -> list[str]:
    manifest = folder / "manifest.json"
    if manifest.is_file():
        return [e["name"] for e in json.loads(manifest.read_text())["experiments"]]
    return sorted(p.parent.name for p in folder.glob("*/result.json"))


def _num(v: float) -> str:
    return f"{v:.4g}"


def _cells(c: dict) -> tuple[str, str, str, str]:
    seeds = c.get("seeds")     # a count, the list of seeds, "n/a" (exact: no seed enters) or None (not run)
    seeds = (str(len(seeds)) if isinstance(seeds, list) and seeds else str(seeds) if isinstance(seeds, int)
             else "exact" if seeds == "n/a" else "-")
    n = c.get("test_images")
    est, iv = c.get("estimate"), c.get("interval")
    estimate = "-" if est is None else _num(est) + (f" [{_num(iv[0])}, {_num(iv[1])}]" if iv else "")
    return seeds, str(n) if n else "-", estimate, f"**{c.get('verdict', '?')}**"


def table(quick: Path | list[Path], fulls: list[Path]) -> str:
    quicks = [quick] if isinstance(quick, Path) else list(quick)
    quick, q = quicks[0], {}
    for f in quicks:
        q.update(_claims(f))
    full: dict[str, dict[str, dict]] = {}
    for f in fulls:
        full.update(_claims(f))
    lines = ["| experiment | claim | seeds | test images | estimate [95% CI] | verdict | `--full`: seeds, estimate "
             "[95% CI], verdict |", "|---|---|---|---|---|---|---|"]
    for exp in _order(quick):
        for name, c in q.get(exp, {}).items():
            seeds, n, est, verdict = _cells(c)
            f = full.get(exp, {}).get(name)
            if f is None:
                right = "quick only" if exp not in full else "not in the full report"
            else:
                fs, _, fe, fv = _cells(f)
                right = f"{fs}, {fe}, {fv}"
            lines.append(f"| `{exp}` | {name} | {seeds} | {n} | {est} | {verdict} | {right} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) < 1:
        print(__doc__, file=sys.stderr)
        return 2
    folders = [Path(a) for a in argv]
    missing = [str(p) for p in folders if not p.is_dir()]
    if missing:
        print(f"not a folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    quicks = [p for p in folders if p.name.startswith("quick-")]
    if not quicks:
        print("no quick-mode folder (quick-*) given", file=sys.stderr)
        return 2
    print(table(quicks, [p for p in folders if not p.name.startswith("quick-")]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
