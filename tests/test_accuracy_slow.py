"""Full-data accuracy targets of the foundation issue. Slow: run with `pytest -m slow`."""

import pytest

from lenetlab.train import fit
from lenetlab.train.presets import resolve

pytestmark = pytest.mark.slow


def test_fast_preset_reaches_99():
    s = fit(resolve("fast", "lenet5"), log=None, progress=False)
    assert s["test_images"] == 10000 and s["test_accuracy"] >= 0.990


def test_classic_default_recipe_error_at_most_1_2_percent():
    s = fit(resolve("fast", "lenet5_classic"), log=None, progress=False)
    assert s["test_images"] == 10000 and s["test_error_percent"] <= 1.2
