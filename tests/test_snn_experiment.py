"""``lenetlab reproduce snn-attacks`` in tiny mode: every code path, resumable, claims from the data, every
iterative attack held to the same gradient budget."""

from __future__ import annotations

import json

from lenetlab.experiments.snn import ATTACKS, BP_ATTACKS


def test_snn_attacks_tiny(tiny):
    out, r = tiny("snn-attacks")          # the one-eps grid of the contract's override; resume: test_experiments
    names = [c.name for c in r.claims]
    expect = [f"{c}_{d}{s}" for d in ("snn", "ann") for c in ("local_rules_look_robust", "hybrid_beats_others")
              for s in ("", "_autograd")]
    assert sorted(names) == sorted(expect)
    # tiny mode trains one seed: every verdict is inconclusive, and says why
    assert all(c.verdict == "inconclusive" and "a verdict needs >= 3" in c.measured for c in r.claims)
    data = json.loads((out / "result.json").read_text())
    s = data["config"]["settings"]
    assert all(c.seeds == 1 and c.test_images == s["test_subset"] and c.rule.startswith("each of") for c in r.claims)
    assert data["experiment"] == "snn-attacks" and data["mode"] == "tiny"
    table = next(v for k, v in r.tables.items() if k.startswith("adversarial"))
    assert len(table) == 2 * (len(BP_ATTACKS) + 3 * len(ATTACKS))
    budget = s["budget"]
    for row in table:
        assert 0 <= row["mean_%"] <= 100
        single = row["attack"] in ("fgsm", "fgsm-rule", "bb-fgsm")
        assert row["gradient_calls"] == (1 if single else budget)
    comparisons = next(v for k, v in r.tables.items() if k.startswith("claim comparisons"))
    assert {row["claim"] for row in comparisons} == set(names)
    assert (out / "runs" / "snn_dfa_s0" / "model.safetensors").is_file()
    assert (out / "runs" / "snn_bp_substitute" / "model.safetensors").is_file()
    assert (out / r.figures[0]).stat().st_size > 1000
    assert "## Claims" in (out / "report.md").read_text()
