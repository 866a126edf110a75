"""The committed results and the docs that quote them stay in step: the README's claims table is what
docs/results/claims_table.py prints from the folders its command names, docs/results/README.md links every
report folder (and nothing that is not there), and no file cites the seed PAPERS.md, which is not in this
repository."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"


def _readme() -> str:
    return (ROOT / "README.md").read_text()


def _table_command() -> list[str]:
    """The folders of the README's `python docs/results/claims_table.py ...` command."""
    m = re.search(r"`python docs/results/claims_table\.py ([^`]+)`", _readme())
    assert m, "the README no longer gives the claims_table.py command"
    folders = m.group(1).split()
    assert folders and all((ROOT / f).is_dir() for f in folders), folders
    return folders


def test_readme_claims_table_is_generated_from_the_committed_folders():
    out = subprocess.run([sys.executable, str(RESULTS / "claims_table.py"), *_table_command()], cwd=ROOT,
                         check=True, capture_output=True, text=True).stdout.strip()
    assert out.startswith("| experiment | claim |")
    assert out in _readme(), "README claims table differs from claims_table.py's output: regenerate it"


def test_the_table_command_names_every_report_folder():
    named = set(_table_command())
    folders = {f"docs/results/{p.name}" for p in RESULTS.iterdir() if p.is_dir()
               and p.name.startswith(("full-", "quick-")) and p.name != "full-wip"}
    assert folders <= named, folders - named


def test_results_index_links_resolve_and_cover_every_report():
    text = (RESULTS / "README.md").read_text()
    links = re.findall(r"\]\(([^)#]+)\)", text)
    assert links
    for link in links:
        assert (RESULTS / link).exists(), link
    reports = {p.relative_to(RESULTS).as_posix() for p in RESULTS.glob("*/*/report.md")
               if not p.parts[-3].startswith("full-wip")}
    linked = {str(Path(link)) for link in links}
    assert reports and reports <= linked, reports - linked


def test_no_source_or_doc_cites_the_seed_papers_file():
    hits = []
    for base in ("src", "docs"):
        for p in (ROOT / base).rglob("*"):
            if p.is_file() and p.suffix in {".py", ".md", ".txt", ".html", ".js", ".c", ".h", ".toml"}:
                if "PAPERS.md" in p.read_text(errors="replace"):
                    hits.append(str(p.relative_to(ROOT)))
    if "PAPERS.md" in _readme():
        hits.append("README.md")
    assert not hits, hits


def test_claims_table_later_quick_folder_replaces_its_experiments(tmp_path):
    """A later quick-* folder replaces the experiments it holds (a quick re-run of one experiment); the first
    one gives the rows' order; other folders are full mode."""
    import json

    def write(folder: str, exp: str, estimate: float, verdict: str) -> None:
        d = tmp_path / folder / exp
        d.mkdir(parents=True)
        claim = {"name": "c", "seeds": [0, 1, 2], "test_images": 10, "estimate": estimate, "interval": None,
                 "verdict": verdict}
        (d / "result.json").write_text(json.dumps({"claims": [claim]}))

    write("quick-a", "x", 1.0, "supported")
    write("quick-a", "y", 2.0, "supported")
    write("quick-b", "y", 3.0, "not supported")
    write("full-c", "x", 4.0, "inconclusive")
    out = subprocess.run([sys.executable, str(RESULTS / "claims_table.py"), *(str(tmp_path / f) for f in
                          ("quick-a", "quick-b", "full-c"))], check=True, capture_output=True, text=True).stdout
    rows = [r for r in out.splitlines() if r.startswith("| `")]
    assert rows == ["| `x` | c | 3 | 10 | 1 | **supported** | 3, 4, **inconclusive** |",
                    "| `y` | c | 3 | 10 | 3 | **not supported** | quick only |"], rows
    bad = subprocess.run([sys.executable, str(RESULTS / "claims_table.py"), str(tmp_path / "full-c")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "quick" in bad.stderr
