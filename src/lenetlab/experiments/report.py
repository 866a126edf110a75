"""Reports of experiment results: one experiment's ``report.md``, and the ``reproduce all`` report.

:func:`render` / :func:`write_report` write one experiment's markdown report
(claims first, then tables and plots). :func:`write_suite_report` writes the
report of a whole ``lenetlab reproduce all`` run into its output directory:

- ``report.html``: self-contained - styles inline, every plot embedded as a
  base64 ``data:`` URI - so the one file can be mailed, archived or opened
  from anywhere;
- ``report.md``: the same content, with plots linked relative to the directory.

Clock readings stay out of both, so they are the same in every run: wall times,
per-cell times, latencies and the claims decided from them (each experiment's
:class:`~lenetlab.experiments.base.Timings`) go to ``timings.html`` and
``timings.md`` beside them (:func:`write_suite_timings`), and one experiment's
to its ``timings.md`` (:func:`write_report`) - measured on this machine, they
vary run to run.

Both open with ONE claims table (experiment, claim, the paper's statement, our
measurement, verdict) over every experiment, then one section per experiment
(its tables, plots, notes and config, or the error that stopped it). Extra
content - e.g. a cross-experiment table such as a robustness matrix - is added
as :class:`Section` objects after the experiments; a section is a title, text,
tables and figures, rendered by both writers.

Example::

    from lenetlab.experiments.report import Section, write_suite_report
    write_suite_report(outcomes, "runs/all", sections=[Section("matrix", tables={"acc": rows})])
"""

from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lenetlab.experiments.base import LEGACY_RULE, TIMINGS_NOTE
from lenetlab.experiments.stats import EXACT, VERDICTS
from lenetlab.fileio import atomic_write_bytes

_MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
         ".gif": "image/gif", ".webp": "image/webp"}


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no rows)\n"
    cols = _columns(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_md_cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    cols = list(rows[0])
    for r in rows[1:]:
        cols += [c for c in r if c not in cols]
    return cols


def _md_cell(v: Any) -> str:
    return fmt(v).replace("|", "\\|").replace("\n", " ")


def _seeds(seeds: Any) -> str:
    if seeds is None:
        return "-"
    if isinstance(seeds, list):
        return f"{len(seeds)} ({', '.join(map(str, seeds))})"
    return "n/a (exact)" if seeds == EXACT else str(seeds)


def _interval(iv: list[float | None] | None) -> str:
    if iv is None:
        return "-"
    lo, hi = ("-inf" if iv[0] is None else f"{iv[0]:.4g}"), ("inf" if iv[1] is None else f"{iv[1]:.4g}")
    return f"[{lo}, {hi}]"


CLAIMS_LEGEND = ("Each verdict is decided by the rule in its row from the 95% interval of the estimate, over the "
                 "training seeds and test images shown: supported / not supported when the interval lies on one "
                 "side, inconclusive when it straddles the threshold or fewer than 3 seeds were trained. Rows "
                 f"whose rule reads {LEGACY_RULE} were decided the old way, from one run without an interval. "
                 "See docs/claims.md; each experiment's method note (claims, implementation, deviations, "
                 "rules) is docs/papers/<experiment>.md.")


def claim_columns(c) -> dict[str, Any]:
    """How the verdict of claim ``c`` was reached, as table cells: rule, seeds, test images, estimate,
    95% interval, verdict (docs/claims.md)."""
    return {"rule": c.rule, "seeds": _seeds(c.seeds), "test images": "-" if c.test_images is None else c.test_images,
            "estimate": "-" if c.estimate is None else c.estimate,
            "95% CI": _interval(c.interval),
            "verdict": c.verdict}


def clock_pointer(result, where: str = "timings.md") -> str:
    """The line a report gives where clock readings would be: what is kept in ``where`` instead, by name."""
    names = [c.name for c in result.timings.claims]
    what = ["the wall time", "each cell's time"]
    t = result.timings
    if t.tables:
        what.append(f"the table{'s' if len(t.tables) != 1 else ''} " + ", ".join(f"'{x}'" for x in t.tables))
    if t.figures:
        what.append(f"the plot{'s' if len(t.figures) != 1 else ''} " + ", ".join(t.figures))
    if names:
        what.append(f"the claim{'s' if len(names) != 1 else ''} decided from them: " + ", ".join(names))
    return (f"Clock readings ({'; '.join(what)}) are in {where}, not here: {TIMINGS_NOTE}, and this report is the "
            "same in every run.")


def _claim_rows(claims) -> list[dict[str, Any]]:
    return [{"claim": c.name, "paper": c.statement, "measured": c.measured, **claim_columns(c)} for c in claims]


def render(result) -> str:
    parts = [f"# {result.experiment}: {result.paper}\n",
             f"Mode: {result.mode}. " + clock_pointer(result) + "\n",
             f"Method note (the paper's claims, what we implement, every deviation, the claim rules): "
             f"docs/papers/{result.experiment}.md in the lenetlab source tree.\n",
             "## Claims\n",
             CLAIMS_LEGEND + "\n",
             markdown_table(_claim_rows(result.claims))]
    parts += _sections(result.tables, result.figures, result.notes)
    parts.append(f"\n## Config\n\n```\n{result.config}\n```\n")
    return "\n".join(parts)


def render_timings(result) -> str:
    """One experiment's ``timings.md``: its wall time and everything it computed from clock readings."""
    t = result.timings
    parts = [f"# {result.experiment}: clock readings\n",
             f"{TIMINGS_NOTE[0].upper()}{TIMINGS_NOTE[1:]}: kept out of result.json, cells.jsonl and report.md "
             "(the same in every run). Each cell's readings: timings.jsonl; all of this: timings.json.\n",
             f"Mode: {result.mode}. Wall time: {result.wall_seconds:.0f} s.\n"]
    if t.claims:
        parts += ["## Claims decided from clock readings\n", CLAIMS_LEGEND + "\n",
                  markdown_table(_claim_rows(t.claims))]
    parts += _sections(t.tables, t.figures, t.notes)
    return "\n".join(parts)


def _sections(tables: dict, figures: list, notes: list) -> list[str]:
    """The tables, figures and notes sections shared by report.md and timings.md."""
    parts: list[str] = []
    for name, rows in tables.items():
        parts += [f"\n## {name}\n", markdown_table(rows)]
    if figures:
        parts.append("\n## Figures\n")
        parts += [f"![{Path(f).stem}]({f})\n" for f in figures]
    if notes:
        parts.append("\n## Notes\n")
        parts += [f"- {n}\n" for n in notes]
    return parts


def write_report(result, out: Path) -> Path:
    """Write ``out/timings.md`` (the clock readings) and ``out/report.md`` (everything else); returns the report."""
    atomic_write_bytes(out / "timings.md", render_timings(result).encode())
    path = out / "report.md"
    atomic_write_bytes(path, render(result).encode())
    return path


# ------------------------------------------------------------------ the reproduce-all report
@dataclass
class Section:
    """Extra report content beside the experiments: figures are paths (absolute, or relative to the
    report's directory)."""

    title: str
    text: str = ""
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)


def claims_rows(outcomes) -> list[dict[str, Any]]:
    """The single claims table: one row per claim of every experiment that produced a result."""
    rows = []
    for o in outcomes:
        if o.result is None:
            rows.append({"experiment": o.name, "paper": "", "claim": "(experiment failed)", "paper says": "",
                         "we measured": o.error or "", "rule": "", "seeds": "", "test images": "", "estimate": "",
                         "95% CI": "", "verdict": "error"})
            continue
        for c in o.result.claims:
            rows.append({"experiment": o.name, "paper": o.result.paper, "claim": c.name, "paper says": c.statement,
                         "we measured": c.measured, **claim_columns(c)})
    return rows


def _summary_rows(outcomes) -> list[dict[str, Any]]:
    rows = []
    for o in outcomes:
        r = o.result
        verdicts = [c.verdict for c in r.claims] if r else []
        rows.append({"experiment": o.name, "status": o.status, "mode": r.mode if r else "",
                     "claims": len(verdicts) if r else "-",
                     **{v: verdicts.count(v) if r else "-" for v in VERDICTS},
                     "legacy rules": sum(c.rule == LEGACY_RULE for c in r.claims) if r else "-",
                     "claims from clock readings": len(r.timings.claims) if r else "-",
                     "config hash": r.config_hash if r else ""})
    return rows


SUITE_CLOCK = ("Clock readings - each experiment's wall time, its cells' times, latencies, times per step and the "
               "claims decided from them (counted in the column 'claims from clock readings', named in each "
               f"experiment's section) - are in timings.html and timings.md beside this report: {TIMINGS_NOTE}, "
               "and this report is the same in every run.")


def _clock_claims_line(r) -> str:
    names = [c.name for c in r.timings.claims]
    return (f"Decided from clock readings (in timings.html / timings.md): {', '.join(names)}." if names else "")


def render_suite_markdown(outcomes, sections: list[Section] = (), title: str = "lenetlab reproduce all") -> str:
    parts = [f"# {title}\n", markdown_table(_summary_rows(outcomes)), SUITE_CLOCK + "\n", "\n## Claims\n",
             CLAIMS_LEGEND + "\n", markdown_table(claims_rows(outcomes))]
    for o in outcomes:
        parts.append(f"\n## {o.name}" + (f": {o.result.paper}" if o.result else "") + "\n")
        parts.append(f"Status: {o.status}." + (f" Mode: {o.result.mode}." if o.result else "") + "\n")
        if o.result and o.result.timings.claims:
            parts.append(_clock_claims_line(o.result) + "\n")
        if o.error:
            parts.append(f"Error: `{o.error}`\n")
        if o.result:
            r = o.result
            for name, rows in r.tables.items():
                parts += [f"\n### {name}\n", markdown_table(rows)]
            parts += [f"\n![{Path(f).stem}]({o.name}/{f})\n" for f in r.figures]
            parts += [f"- {n}\n" for n in r.notes]
    for s in sections:
        parts += [f"\n## {s.title}\n", s.text + "\n" if s.text else ""]
        for name, rows in s.tables.items():
            parts += [f"\n### {name}\n", markdown_table(rows)]
        parts += [f"\n![{Path(f).stem}]({f})\n" for f in s.figures]
    return "\n".join(parts)


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
padding:0 1em;color:#1b1b1b}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}h3{font-size:1.05em}
table{border-collapse:collapse;margin:.6em 0;font-size:12.5px}th,td{border:1px solid #ccc;padding:3px 7px;
text-align:left;vertical-align:top}th{background:#f3f3f3}tr:nth-child(even) td{background:#fafafa}
.supported{color:#0a6b2b;font-weight:600}.not{color:#b00020;font-weight:600}.inconclusive{color:#8a6d00}
.error,.failed{color:#b00020;font-weight:600}img{max-width:100%;border:1px solid #eee;margin:.4em 0}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:12px}.muted{color:#666}
"""


def _html_table(rows: list[dict[str, Any]], verdict_col: str | None = None) -> str:
    if not rows:
        return "<p class=muted>(no rows)</p>"
    cols = _columns(rows)
    out = ["<table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr></thead><tbody>"]
    for r in rows:
        cells = []
        for c in cols:
            text = html.escape(fmt(r.get(c, "")))
            cls = f' class="{text.split()[0]}"' if c == verdict_col and text else ""
            cells.append(f"<td{cls}>{text}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out) + "</tbody></table>"


def _img(path: Path, alt: str) -> str:
    """An <img> with the file embedded as a data URI (a missing file is reported in place)."""
    try:
        data = path.read_bytes()
    except OSError:
        return f"<p class=error>missing figure {html.escape(str(path))}</p>"
    mime = _MIME.get(path.suffix.lower(), "application/octet-stream")
    return (f'<figure><img alt="{html.escape(alt)}" src="data:{mime};base64,{base64.b64encode(data).decode()}">'
            f"<figcaption class=muted>{html.escape(path.name)}</figcaption></figure>")


def render_suite_html(outcomes, out: Path, sections: list[Section] = (),
                      title: str = "lenetlab reproduce all") -> str:
    e = html.escape
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{e(title)}</title>"
             f"<meta name=viewport content='width=device-width,initial-scale=1'><style>{_CSS}</style></head><body>",
             f"<h1>{e(title)}</h1>",
             "<p>" + " &middot; ".join(["<a href='#claims'>claims</a>"] + [f"<a href='#{e(o.name)}'>{e(o.name)}</a>"
                                                                             for o in outcomes]) + "</p>",
             _html_table(_summary_rows(outcomes), "status"), f"<p class=muted>{e(SUITE_CLOCK)}</p>",
             "<h2 id=claims>Claims</h2>", _html_table(claims_rows(outcomes), "verdict"),
             f"<p class=muted>{e(CLAIMS_LEGEND)}</p>"]
    for o in outcomes:
        r = o.result
        parts.append(f"<h2 id='{e(o.name)}'>{e(o.name)}" + (f": {e(r.paper)}" if r else "") + "</h2>")
        parts.append(f"<p>Status: <b>{e(o.status)}</b>." + (f" Mode: {e(r.mode)}." if r else "") + "</p>")
        if r and r.timings.claims:
            parts.append(f"<p class=muted>{e(_clock_claims_line(r))}</p>")
        if o.error:
            parts.append(f"<p class=error>Error: {e(o.error)}</p>")
        if r:
            for name, rows in r.tables.items():
                parts += [f"<h3>{e(name)}</h3>", _html_table(rows)]
            parts += [_img(out / o.name / f, Path(f).stem) for f in r.figures]
            if r.notes:
                parts.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in r.notes) + "</ul>")
            parts.append(f"<details><summary>config</summary><pre>"
                         f"{e(json.dumps(r.config, indent=1, default=repr))}</pre></details>")
    for s in sections:
        parts.append(f"<h2>{e(s.title)}</h2>" + (f"<p>{e(s.text)}</p>" if s.text else ""))
        for name, rows in s.tables.items():
            parts += [f"<h3>{e(name)}</h3>", _html_table(rows)]
        parts += [_img(out / f, Path(f).stem) for f in s.figures]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_suite_report(outcomes, out: str | os.PathLike, sections: list[Section] = (),
                       title: str = "lenetlab reproduce all") -> tuple[Path, Path]:
    """Write ``out/report.html`` (self-contained) and ``out/report.md``, and their clock readings apart
    (:func:`write_suite_timings`); returns the two report paths."""
    out = Path(out)
    write_suite_timings(outcomes, out, title)
    md, page = out / "report.md", out / "report.html"
    atomic_write_bytes(md, render_suite_markdown(outcomes, sections, title).encode())
    atomic_write_bytes(page, render_suite_html(outcomes, out, sections, title).encode())
    return page, md


# ------------------------------------------------------------------ the clock readings of a reproduce-all run
def _wall_seconds(o) -> float:
    return o.result.wall_seconds if o.result else o.seconds


def _timing_summary_rows(outcomes) -> list[dict[str, Any]]:
    return [{"experiment": o.name, "status": o.status, "mode": o.result.mode if o.result else "",
             "wall time (s)": round(_wall_seconds(o)),
             "claims from clock readings": len(o.result.timings.claims) if o.result else "-"} for o in outcomes]


def _timing_claim_rows(outcomes) -> list[dict[str, Any]]:
    return [{"experiment": o.name, "claim": c.name, "paper says": c.statement, "we measured": c.measured,
             **claim_columns(c)} for o in outcomes if o.result for c in o.result.timings.claims]


TIMINGS_LEGEND = (f"Clock readings, {TIMINGS_NOTE}: each experiment's wall time, the tables, plots and claims it "
                  "computed from times it measured (its timings.json and timings.md; each cell's readings in its "
                  "timings.jsonl). A status 'skipped' shows the wall time of the run that produced the result. "
                  "Everything else is in report.html / report.md, the same in every run.")


def render_suite_timings_markdown(outcomes, title: str = "lenetlab reproduce all") -> str:
    total = sum(_wall_seconds(o) for o in outcomes if o.status != "skipped")
    parts = [f"# {title}: clock readings\n", TIMINGS_LEGEND + "\n", markdown_table(_timing_summary_rows(outcomes)),
             f"Wall time of the experiments run this time: {total:.0f} s.\n"]
    claims = _timing_claim_rows(outcomes)
    if claims:
        parts += ["\n## Claims decided from clock readings\n", CLAIMS_LEGEND + "\n", markdown_table(claims)]
    for o in outcomes:
        t = o.result.timings if o.result else None
        if not t:
            continue
        parts.append(f"\n## {o.name}\n")
        for name, rows in t.tables.items():
            parts += [f"\n### {name}\n", markdown_table(rows)]
        parts += [f"\n![{Path(f).stem}]({o.name}/{f})\n" for f in t.figures]
        parts += [f"- {n}\n" for n in t.notes]
    return "\n".join(parts)


def render_suite_timings_html(outcomes, out: Path, title: str = "lenetlab reproduce all") -> str:
    e = html.escape
    total = sum(_wall_seconds(o) for o in outcomes if o.status != "skipped")
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{e(title)}: clock readings</title>"
             f"<meta name=viewport content='width=device-width,initial-scale=1'><style>{_CSS}</style></head><body>",
             f"<h1>{e(title)}: clock readings</h1>", f"<p class=muted>{e(TIMINGS_LEGEND)}</p>",
             _html_table(_timing_summary_rows(outcomes), "status"),
             f"<p>Wall time of the experiments run this time: {total:.0f} s.</p>"]
    claims = _timing_claim_rows(outcomes)
    if claims:
        parts += ["<h2>Claims decided from clock readings</h2>", _html_table(claims, "verdict"),
                  f"<p class=muted>{e(CLAIMS_LEGEND)}</p>"]
    for o in outcomes:
        t = o.result.timings if o.result else None
        if not t:
            continue
        parts.append(f"<h2 id='{e(o.name)}'>{e(o.name)}</h2>")
        for name, rows in t.tables.items():
            parts += [f"<h3>{e(name)}</h3>", _html_table(rows)]
        parts += [_img(out / o.name / f, Path(f).stem) for f in t.figures]
        if t.notes:
            parts.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in t.notes) + "</ul>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_suite_timings(outcomes, out: str | os.PathLike, title: str = "lenetlab reproduce all") -> Path:
    """Write the clock readings of a ``reproduce all`` run: ``out/timings.json`` (wall time and the verdicts of the
    claims decided from clock readings, per experiment), ``out/timings.md`` and ``out/timings.html``
    (self-contained); returns the HTML page."""
    out = Path(out)
    atomic_write_bytes(out / "timings.json", (json.dumps({
        "note": f"clock readings: {TIMINGS_NOTE}",
        "experiments": [{"name": o.name, "status": o.status, "wall_seconds": round(_wall_seconds(o), 3),
                         "claims": {c.name: c.verdict for c in o.result.timings.claims} if o.result else {},
                         "metrics": dict(o.result.timings.metrics) if o.result else {}} for o in outcomes]},
        indent=2) + "\n").encode())
    atomic_write_bytes(out / "timings.md", render_suite_timings_markdown(outcomes, title).encode())
    page = out / "timings.html"
    atomic_write_bytes(page, render_suite_timings_html(outcomes, out, title).encode())
    return page
