"""``lenetlab reproduce snn-attacks`` in tiny mode: every code path, resumable, claims from the data."""

from __future__ import annotations

import json

from lenetlab.experiments import reproduce


def test_snn_attacks_tiny(tmp_path):
    r = reproduce("snn-attacks", tmp_path, tiny=True)
    names = [c.name for c in r.claims]
    expect = [(f"local_rules_look_robust_{d}", f"local_rules_look_robust_{d}_autograd", f"hybrid_beats_others_{d}")
              for d in ("snn", "ann")]
    assert names == [n for trio in expect for n in trio]
    assert all(c.supported in (True, False) and "%" in c.measured for c in r.claims)
    data = json.loads((tmp_path / "result.json").read_text())
    assert data["experiment"] == "snn-attacks" and data["mode"] == "tiny"
    table = next(v for k, v in r.tables.items() if k.startswith("adversarial"))
    # 2 domains x (bp: 4 attacks + 3 local rules x 6 attacks)
    assert len(table) == 2 * (4 + 3 * 6)
    for row in table:
        assert 0 <= row["mean_%"] <= 100
    assert (tmp_path / "runs" / "snn_dfa" / "model.safetensors").is_file()
    assert (tmp_path / r.figures[0]).stat().st_size > 1000
    assert "## Claims" in (tmp_path / "report.md").read_text()
    r2 = reproduce("snn-attacks", tmp_path, tiny=True)     # every cell reused
    assert r2.tables == r.tables
