import pytest

from lenetlab.config import DataConfig, RunConfig, apply_override, from_dict, load_toml, parse_value
from lenetlab.errors import LenetlabError
from lenetlab.train.presets import resolve


def test_from_dict_types():
    cfg = from_dict(RunConfig, {"train": {"epochs": 2, "lr": 1}, "data": {"test_subset": None}})
    assert cfg.train.epochs == 2 and cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)


@pytest.mark.parametrize("data, msg", [
    ({"train": {"epoch": 2}}, "unknown config key 'train.epoch'"),
    ({"trian": {}}, "unknown config key 'trian'"),
    ({"train": {"epochs": "3"}}, "'train.epochs' must be int"),
    ({"train": {"epochs": 2.5}}, "'train.epochs' must be int"),
    ({"train": {"channels_last": 1}}, "'train.channels_last' must be bool"),
    ({"data": {"val_size": True}}, "'data.val_size' must be int"),
    ({"train": 3}, "config train: expected a table"),
])
def test_from_dict_rejects(data, msg):
    with pytest.raises(LenetlabError) as e:
        from_dict(RunConfig, data)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_toml_and_overrides(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[model]\nname = "lenet5"\nactivation = "tanh"\n[train]\nepochs = 4\n')
    o: dict = {}
    apply_override(o, "train.lr=0.01")
    apply_override(o, "model.pool=avg")
    cfg = resolve(None, None, load_toml(str(p)), o)
    assert cfg.model.options["activation"] == "tanh" and cfg.model.options["pool"] == "avg"
    assert cfg.train.epochs == 4 and cfg.train.lr == 0.01 and cfg.preset == "fast"


def test_toml_unknown_model_option(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[model]\nname = "lenet5"\ncolour = "red"\n')
    with pytest.raises(LenetlabError, match="unknown config key 'model.colour'"):
        resolve(None, None, load_toml(str(p)))


def test_bad_toml(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[train\nepochs=")
    with pytest.raises(LenetlabError, match="invalid TOML"):
        load_toml(str(p))
    with pytest.raises(LenetlabError, match="no such config file"):
        load_toml(str(tmp_path / "none.toml"))


def test_parse_value():
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5 and parse_value("true") is True
    assert parse_value("relu") == "relu" and parse_value("[1, 2]") == [1, 2]


def test_bad_override():
    with pytest.raises(LenetlabError, match="expected section.key=value"):
        apply_override({}, "lr")
    with pytest.raises(LenetlabError, match="key must look like"):
        apply_override({}, "lr=3")


def test_classic_gets_its_data_needs():
    cfg = resolve("fast", "lenet5_classic")
    assert cfg.data.pad == 2 and cfg.data.normalize == "lecun"
    assert cfg.data == from_dict(DataConfig, cfg.data.__dict__)


def test_unknown_preset():
    with pytest.raises(LenetlabError, match="unknown preset 'slow'; choose from: fast, paper"):
        resolve("slow")


def test_rerun_from_run_dir_config(small_run):
    """A run's config.json is a valid --config: the re-run resolves to the same config."""
    from lenetlab.rundir import load_config

    cfg = resolve(None, None, load_toml(str(small_run / "config.json")))
    assert cfg == load_config(small_run)


def test_shipped_configs_resolve():
    from pathlib import Path

    for p in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml")):
        cfg = resolve(None, None, load_toml(str(p)))
        assert cfg.model.name in ("lenet5", "lenet5_classic", "lenet5_abs"), p
