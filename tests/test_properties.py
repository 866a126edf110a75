"""Property-based tests (hypothesis): bad numbers, configs and sweep files never give a traceback.

CLI numeric options. Every numeric flag of every command is found by walking the parser: a flag checked by
:mod:`lenetlab.validate` (its argparse ``type`` is a ``validate.Number``) is refused while the command line
is parsed, so what a generated value does is decided there. For each example:

* refused: ``lenetlab.cli.main`` is run in-process with the value and must exit 2 with exactly one
  ``lenetlab: error:`` line on stderr, nothing on stdout, and no ``--out`` directory created;
* accepted: the value is finite, inside the option's range, and the command is NOT run (parse-only: a
  generated ``--draws 9000`` or ``--samples 10**6`` is a legitimate, long run). That accepted values also
  work is shown on the tiny run by ``test_accepted_edge_values_run``.

``train``'s ``--epochs/--batch-size/--lr/--stop-at`` go through the config ranges instead (checked by
``resolve``, before the run directory exists), and the attack options (``--steps``, ``--lam``, ...) through
each attack's ``Options``; for those, acceptance is decided by building the config / the attack, and a
refusal is again checked through ``main``.

TOML configs (``from_dict`` / ``resolve`` / ``load_toml``) and sweep files (``lenetlab.sweep.parse`` /
``load``): generated documents give a config / a sweep or a :class:`LenetlabError`, never anything else.
All examples are derandomised (the same on every run). Each property runs a few examples in the fast tier
and a ``_full`` twin with four times as many (or more) in the slow tier.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lenetlab.errors import LenetlabError
from lenetlab.validate import Number


def fast(examples: int = 40) -> settings:
    return settings(derandomize=True, deadline=None, max_examples=examples, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


FAST = fast(10)

TINY = {"data": {"train_subset": 600, "test_subset": 200, "val_size": 100}, "train": {"epochs": 1}}


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory) -> dict[str, Path]:
    """A tiny LeNet-5 (one epoch on 600 images, under a second) and its int8 quantised run."""
    from lenetlab.cli import main
    from lenetlab.train import fit
    from lenetlab.train.presets import resolve

    root = tmp_path_factory.mktemp("props")
    fit(resolve("fast", "lenet5", overrides=TINY), out=root / "run", log=None, progress=False)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["quantize", str(root / "run"), "--out", str(root / "qrun"), "--calibration", "50",
                     "--limit", "50"]) == 0
    return {"run": root / "run", "qrun": root / "qrun", "root": root}


def run_main(argv: list[str]) -> tuple[int, str, str]:
    from lenetlab.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:        # argparse usage errors: not expected for well-formed numbers
            code = e.code if isinstance(e.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def assert_refused(argv: list[str], out_dir: Path) -> None:
    code, out, err = run_main(argv)
    lines = err.strip().splitlines()
    assert code == 2, (argv, code, err)
    assert len(lines) == 1 and lines[0].startswith("lenetlab: error: "), (argv, err)
    assert out == "", (argv, out)
    assert not out_dir.exists(), (argv, "created its output directory")


# ---------------------------------------------------------------- the parser's numeric flags
def _subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, its parser) for every leaf subcommand: ("eval",), ("noise", "eval"), ..."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, p in subs[0].choices.items():
        yield from _subcommands(p, (*path, name))


def numeric_flags() -> list[tuple[tuple[str, ...], str, Number]]:
    from lenetlab.cli import build_parser

    out = []
    for path, p in _subcommands(build_parser()):
        for a in p._actions:
            if isinstance(a.type, Number):
                out.append((path, a.option_strings[0], a.type))
    return out


# train's numeric flags that are checked by the config ranges (config.RANGES), not by a validate.Number
CONFIG_CHECKED = {("train", "--epochs"), ("train", "--batch-size"), ("train", "--lr"), ("train", "--stop-at")}


def test_every_numeric_flag_is_checked():
    """A new numeric flag declared with plain type=int/float would skip the checks: none exists."""
    from lenetlab.cli import build_parser

    plain = [(path[0], a.option_strings[0]) for path, p in _subcommands(build_parser()) for a in p._actions
             if a.type in (int, float)]
    assert set(plain) <= CONFIG_CHECKED, sorted(set(plain) - CONFIG_CHECKED)
    found = {(" ".join(path), flag) for path, flag, _ in numeric_flags()}
    for want in [("eval", "--limit"), ("serve", "--port"), ("export", "--check-images"), ("attack", "--eps"),
                 ("noise eval", "--sigma"), ("noise eval", "--draws"), ("faults campaign", "--samples"),
                 ("faults nvf", "--validate"), ("compress", "--rank"), ("compress", "--depth"),
                 ("compress", "--fit-steps"), ("cascade", "--threshold"), ("quantize", "--calibration"),
                 ("fused", "--images"), ("sweep", "--workers"), ("predict", "--top"), ("reproduce", "--jobs")]:
        assert want in found, want


def base_argv(path: tuple[str, ...], runs: dict[str, Path], out: Path) -> list[str]:
    """The smallest valid command line of each command (positionals and required options)."""
    run, qrun = str(runs["run"]), str(runs["qrun"])
    return {
        ("train",): ["train", "--out", str(out)],
        ("eval",): ["eval", run], ("predict",): ["predict", run, str(out / "x.png")],
        ("export",): ["export", run, "--out", str(out)], ("serve",): ["serve", run],
        ("sweep",): ["sweep", str(out / "s.toml"), "--out", str(out)],
        ("quantize",): ["quantize", run, "--out", str(out)], ("fused",): ["fused", run],
        ("cascade",): ["cascade", run], ("noise", "eval"): ["noise", "eval", run, "--sigma", "0.1"],
        ("faults", "campaign"): ["faults", "campaign", qrun, "--target", "weights", "--out", str(out)],
        ("faults", "nvf"): ["faults", "nvf", qrun, "--out", str(out)],
        ("attack",): ["attack", run], ("compress",): ["compress", run, "--method", "tt", "--out", str(out)],
        ("reproduce",): ["reproduce", "all", "--out", str(out)],
    }[path]


def _text(v) -> str:
    return repr(v) if isinstance(v, float) else str(v)


# numbers and near-numbers: nan, +-inf, huge, negative, zero, fractions, ints far past 64 bits
NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([0, -0.0, 1, -1, 1e-320, 1e300, 2**31, 2**32, 2**63, 65536, 0.5, 1.5]),
).map(_text) | st.sampled_from(["nan", "-inf", "1e999", "", " ", "0x10", "1_000", "one", "9" * 5000])

FLAGS = numeric_flags()


def _check_numeric_flag(tiny_runs, path, flag, checker, text):
    out = tiny_runs["root"] / "never"
    argv = [*base_argv(path, tiny_runs, out), f"{flag}={text}"]
    try:
        ns = _parser().parse_args(argv)
    except LenetlabError:
        assert_refused(argv, out)
        return
    value = getattr(ns, next(a.dest for a in _actions(path) if flag in a.option_strings))
    value = value[-1] if isinstance(value, list) else value
    assert isinstance(value, int if checker.integer else float) and not isinstance(value, bool)
    assert math.isfinite(value)
    b = checker.bounds
    assert b["lo"] is None or (value > b["lo"] if b["lo_open"] else value >= b["lo"])
    assert b["hi"] is None or (value < b["hi"] if b["hi_open"] else value <= b["hi"])


EVERY_FLAG = pytest.mark.parametrize("path, flag, checker", FLAGS, ids=[f"{' '.join(p)} {f}" for p, f, _ in FLAGS])


@EVERY_FLAG
@fast(3)
@given(text=NUMBERS)
def test_numeric_flag_is_accepted_in_range_or_refused_in_one_line(tiny_runs, path, flag, checker, text):
    _check_numeric_flag(tiny_runs, path, flag, checker, text)


@pytest.mark.slow   # the same, 10 numbers a flag (the fast tier: 3)
@EVERY_FLAG
@FAST
@given(text=NUMBERS)
def test_numeric_flag_is_accepted_in_range_or_refused_in_one_line_full(tiny_runs, path, flag, checker, text):
    _check_numeric_flag(tiny_runs, path, flag, checker, text)


def _actions(path: tuple[str, ...]):
    return dict(_subcommands(_parser()))[path]._actions


@functools.lru_cache(maxsize=1)
def _parser() -> argparse.ArgumentParser:
    from lenetlab.cli import build_parser

    return build_parser()


# ---------------------------------------------------------------- train: the config ranges
def _check_train_number(tiny_runs, flag, text):
    from lenetlab.cli import _train_overrides, build_parser
    from lenetlab.train.presets import resolve

    out = tiny_runs["root"] / "never-train"
    argv = ["train", "--out", str(out), f"{flag}={text}"]
    try:
        ns = build_parser().parse_args(argv)
    except SystemExit:      # argparse's type=int/float refused the text itself ("one", "", "0x10")
        return
    try:
        cfg = resolve(None, None, {}, _train_overrides(ns))
    except LenetlabError:
        assert_refused(argv, out)
        return
    assert all(math.isfinite(v) for v in (cfg.train.lr, cfg.train.epochs, cfg.train.batch_size))


TRAIN_FLAGS = pytest.mark.parametrize("flag", sorted(f for c, f in CONFIG_CHECKED))


@TRAIN_FLAGS
@fast(5)
@given(text=NUMBERS)
def test_train_numbers_resolve_or_are_refused_before_the_run_exists(tiny_runs, flag, text):
    _check_train_number(tiny_runs, flag, text)


@pytest.mark.slow   # the same, 10 numbers a flag (the fast tier: 5)
@TRAIN_FLAGS
@FAST
@given(text=NUMBERS)
def test_train_numbers_resolve_or_are_refused_before_the_run_exists_full(tiny_runs, flag, text):
    _check_train_number(tiny_runs, flag, text)


# ---------------------------------------------------------------- attack options (each attack's Options)
@pytest.fixture(scope="module")
def target(tiny_runs):
    from lenetlab.attacks import Target

    return Target.from_run(tiny_runs["run"])


def _check_attack_option(tiny_runs, target, attack, flag, text):
    from lenetlab.attacks import make_attack
    from lenetlab.attacks.cli import _options
    from lenetlab.cli import build_parser

    out = tiny_runs["root"] / "never-attack"
    argv = ["attack", str(tiny_runs["run"]), "--attack", attack, "--limit", "1", "--save-examples", str(out),
            f"{flag}={text}"]
    if attack == "hybrid":
        argv += ["--substitute", str(tiny_runs["run"])]
    opts = _options(build_parser().parse_args(argv))
    try:
        atk = make_attack(attack, target, 0.1, substitute=target, **opts)
    except LenetlabError:
        assert_refused(argv, out)
        return
    for v in atk.options.values():
        assert not isinstance(v, float) or math.isfinite(v)


ATTACK_FLAGS = pytest.mark.parametrize("attack, flag", [("pgd", "--steps"), ("pgd", "--step-size"), ("hybrid", "--lam"),
                                                         ("hybrid", "--transfer-steps"), ("hybrid", "--steps")])


@ATTACK_FLAGS
@fast(3)
@given(text=NUMBERS)
def test_attack_options_build_or_are_refused(tiny_runs, target, attack, flag, text):
    _check_attack_option(tiny_runs, target, attack, flag, text)


@pytest.mark.slow   # the same, 10 numbers an option (the fast tier: 3)
@ATTACK_FLAGS
@fast(10)
@given(text=NUMBERS)
def test_attack_options_build_or_are_refused_full(tiny_runs, target, attack, flag, text):
    _check_attack_option(tiny_runs, target, attack, flag, text)


def test_accepted_edge_values_run(tiny_runs, tmp_path):
    """The edges the validators accept are real, working values (each on a few images of the tiny run)."""
    run, qrun = str(tiny_runs["run"]), str(tiny_runs["qrun"])
    for argv in (["eval", run, "--limit", "1"],
                 ["noise", "eval", run, "--sigma", "0", "1e6", "--draws", "1", "--limit", "5", "--seed", "4294967295"],
                 ["cascade", run, "--threshold", "0", "--limit", "3"],
                 ["cascade", run, "--threshold", "1e300", "--limit", "3"],
                 ["attack", run, "--eps", "0", "1", "--limit", "3", "--seed", "0"],
                 ["attack", run, "--attack", "pgd", "--steps", "1", "--step-size", "1e-30", "--limit", "2"],
                 ["faults", "nvf", qrun, "--images", "1", "--validate", "0", "--out", str(tmp_path / "nvf")]):
        code, out, err = run_main(argv)
        assert code in (0, 1) and "Traceback" not in err, (argv, err)


# ---------------------------------------------------------------- TOML configs
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                    st.sampled_from(["lenet5", "relu", "tanh", "fast", "paper", "mnist", "adam", "sgd", "onecycle"]))
KEYS = st.sampled_from(["preset", "model", "data", "train", "name", "activation", "options", "epochs", "lr",
                        "batch_size", "seed", "val_size", "train_subset", "test_subset", "dataset", "zo", "lb",
                        "lbfgs", "hardening", "rule", "k", "patience", "qat_bits", "optimizer", "schedule",
                        "pad", "std", "nope"]) | st.text(max_size=6)
TREES = st.recursive(SCALARS | st.lists(SCALARS, max_size=3),
                     lambda inner: st.dictionaries(KEYS, inner, max_size=4), max_leaves=12)
CONFIG_DOCS = st.dictionaries(st.sampled_from(["preset", "model", "data", "train", "other"]), TREES, max_size=4)


def _check_config_dicts_give_a_config_or_one_error(doc):
    from lenetlab.config import RunConfig, from_dict
    from lenetlab.train.presets import resolve

    for build in (lambda: from_dict(RunConfig, doc), lambda: resolve(file_data=doc)):
        try:
            build()
        except LenetlabError as e:
            assert "\n" not in str(e).strip()


@fast(20)
@given(doc=CONFIG_DOCS)
def test_config_dicts_give_a_config_or_one_error(doc):
    _check_config_dicts_give_a_config_or_one_error(doc)


@pytest.mark.slow   # the same, 80 documents (the fast tier: 20)
@fast(80)
@given(doc=CONFIG_DOCS)
def test_config_dicts_give_a_config_or_one_error_full(doc):
    _check_config_dicts_give_a_config_or_one_error(doc)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return '"' + v.encode("unicode_escape").decode().replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f'"{k}" = {_toml_value(x)}' for k, x in v.items()) + "}"
    raise TypeError(v)


def _check_toml_config_files_load_or_fail_in_one_line(tmp_path, doc, junk):
    from lenetlab.config import load_toml
    from lenetlab.train.presets import resolve

    doc = {k: v for k, v in doc.items() if v is not None}      # TOML has no null
    text = "\n".join(f'"{k}" = {_toml_value(v)}' for k, v in doc.items() if not _has_none(v)) + junk
    path = tmp_path / "c.toml"
    path.write_text(text)
    try:
        resolve(file_data=load_toml(str(path)))
    except LenetlabError as e:
        assert "\n" not in str(e).strip() or "invalid TOML" in str(e)


@fast(15)
@given(doc=CONFIG_DOCS, junk=st.sampled_from(["", "\n[[", "\nx = ", "\n\x00", "\n[train]\nlr = 1\nlr = 2"]))
def test_toml_config_files_load_or_fail_in_one_line(tmp_path, doc, junk):
    _check_toml_config_files_load_or_fail_in_one_line(tmp_path, doc, junk)


@pytest.mark.slow   # the same, 60 files (the fast tier: 15)
@fast(60)
@given(doc=CONFIG_DOCS, junk=st.sampled_from(["", "\n[[", "\nx = ", "\n\x00", "\n[train]\nlr = 1\nlr = 2"]))
def test_toml_config_files_load_or_fail_in_one_line_full(tmp_path, doc, junk):
    _check_toml_config_files_load_or_fail_in_one_line(tmp_path, doc, junk)


def _has_none(v) -> bool:
    if v is None:
        return True
    if isinstance(v, list):
        return any(_has_none(x) for x in v)
    if isinstance(v, dict):
        return any(_has_none(x) for x in v.values())
    return False


# ---------------------------------------------------------------- sweep files
SWEEP_HEAD = st.dictionaries(
    st.sampled_from(["kind", "name", "metric", "goal", "function", "save_runs", "experiment", "mode", "bogus"]),
    SCALARS | st.sampled_from(["train", "function", "experiment", "lenetlab.sweep.trials:toy", "max", "min",
                               "quick", "tiny", "test_accuracy", "x", "abs", "nope:nothing"]) | st.lists(SCALARS),
    max_size=4)
SWEEP_KEYS = st.sampled_from(["train.lr", "train.seed", "train.epochs", "model.activation", "x", "y", "seed",
                              "train", "train.lr.x", "train..lr", ".", "data.train_subset", "sleep"])
DISTS = st.one_of(
    st.builds(lambda n, a: {n: a}, st.sampled_from(["uniform", "log_uniform", "int_uniform", "choice", "normal"]),
              st.lists(SCALARS, max_size=3)),
    st.dictionaries(st.sampled_from(["uniform", "choice"]), st.lists(SCALARS, max_size=2), max_size=2),
    SCALARS)
SWEEPS = st.fixed_dictionaries({}, optional={
    "sweep": SWEEP_HEAD | SCALARS,
    "base": st.dictionaries(st.sampled_from(["x", "y", "seed", "sleep", "train", "model", "preset"]),
                            TREES, max_size=3) | SCALARS,
    "grid": st.dictionaries(SWEEP_KEYS, st.lists(SCALARS, max_size=3) | SCALARS | TREES, max_size=3) | SCALARS,
    "random": st.dictionaries(SWEEP_KEYS | st.sampled_from(["n", "seed"]),
                              DISTS | st.integers(min_value=-3, max_value=2**64), max_size=3) | SCALARS,
    "extra": SCALARS,
})


def _check_sweep_documents_parse_or_fail_in_one_line(doc):
    from lenetlab.sweep import parse

    try:
        sw = parse(doc, "gen.toml")
    except LenetlabError as e:
        assert "\n" not in str(e).strip()
        return
    assert sw.kind in ("train", "experiment", "function")


@fast(50)
@given(doc=SWEEPS)
def test_sweep_documents_parse_or_fail_in_one_line(doc):
    _check_sweep_documents_parse_or_fail_in_one_line(doc)


@pytest.mark.slow   # the same, 200 documents (the fast tier: 50)
@fast(200)
@given(doc=SWEEPS)
def test_sweep_documents_parse_or_fail_in_one_line_full(doc):
    _check_sweep_documents_parse_or_fail_in_one_line(doc)


def _check_sweep_files_load_or_fail_in_one_line(tmp_path, doc):
    from lenetlab.sweep import load

    lines = []
    for section, body in doc.items():
        if isinstance(body, dict) and not _has_none(body):
            lines.append(f"[{section}]")
            lines += [f'"{k}" = {_toml_value(v)}' for k, v in body.items()]
        elif not _has_none(body):
            lines.append(f'"{section}" = {_toml_value(body)}')
    path = tmp_path / "s.toml"
    path.write_text("\n".join(lines))
    try:
        load(path)
    except LenetlabError as e:
        assert "\n" not in str(e).strip() or "invalid TOML" in str(e)


@fast(10)
@given(doc=SWEEPS)
def test_sweep_files_load_or_fail_in_one_line(tmp_path, doc):
    _check_sweep_files_load_or_fail_in_one_line(tmp_path, doc)


@pytest.mark.slow   # the same, 40 files (the fast tier: 10)
@fast(40)
@given(doc=SWEEPS)
def test_sweep_files_load_or_fail_in_one_line_full(tmp_path, doc):
    _check_sweep_files_load_or_fail_in_one_line(tmp_path, doc)
