"""``lenetlab attack RUN_DIR --attack pgd --eps 0.1 [--substitute RUN_DIR]``: accuracy under attack.

Prints clean accuracy, adversarial accuracy and the attack success rate (of
the correctly classified test images, the fraction the attack flips);
``--save-examples DIR`` writes the adversarial images as IDX (uint8, like
MNIST), their labels, and a PNG grid of clean / adversarial pairs.

The attack options (``--steps``, ``--lam``, ...) are not written here: each
field of a registered attack's ``Options`` dataclass becomes one flag, so an
attack from an outside plugin gets its flags with nothing to edit here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from pathlib import Path
from typing import Any


def add_commands(sub: argparse._SubParsersAction) -> None:
    from lenetlab import validate as V

    p = sub.add_parser("attack", help="adversarial attacks: FGSM, PGD, black-box, hybrid (Lin & Sengupta 2025)")
    p.add_argument("run_dir")
    p.add_argument("--attack", default="fgsm", help="lenetlab list attacks (fgsm, pgd, bb-fgsm, bb-pgd, hybrid, ...)")
    p.add_argument("--eps", type=V.real("--eps", lo=0.0, hi=V.L2_EPS_MAX), nargs="+", default=[0.1],
                   help="budget(s) in pixel units: the L-inf radius in [0, 1] (with --norm 2 the L2 radius, "
                        f"in [0, {V.L2_EPS_MAX:g}])")
    p.add_argument("--substitute", metavar="RUN_DIR", help="substitute model for bb-* and hybrid")
    p.add_argument("--grad-source", default="autograd", choices=("autograd", "rule"),
                   help="target gradient: autograd (surrogate) or the run's learning-rule pathway")
    p.add_argument("--limit", type=V.count("--limit"), default=1000, metavar="N",
                   help="first N test images (default 1000)")
    p.add_argument("--seed", type=V.seed(), default=0)
    p.add_argument("--save-examples", metavar="DIR", help="write adversarial images (IDX) and a PNG grid here")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    from lenetlab.devices import add_flag

    add_flag(p, "where the target and substitute run (random draws stay on the CPU)")
    fixed = {a.dest for a in p._actions}
    options = option_fields()
    g = p.add_argument_group("attack options (from each attack's Options; given only to attacks that declare them)")
    for name, decls in options.items():
        if name in fixed:
            from lenetlab.errors import LenetlabError

            raise LenetlabError(f"attack {decls[0][0]!r}: option {name!r} clashes with the fixed "
                                f"`lenetlab attack` flag --{name.replace('_', '-')}")
        g.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, **_flag(decls))
    p.set_defaults(func=cmd_attack, attack_options=tuple(options))


def option_fields() -> dict[str, list[tuple[str, dataclasses.Field, Any]]]:
    """option name -> [(attack, field, resolved type)] over every registered attack's ``Options``."""
    from lenetlab.registry import get, names

    out: dict[str, list[tuple[str, dataclasses.Field, Any]]] = {}
    for attack in names("attack"):
        cls = get("attack", attack).Options
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            out.setdefault(f.name, []).append((attack, f, hints[f.name]))
    return out


def _flag(decls: list[tuple[str, dataclasses.Field, Any]]) -> dict[str, Any]:
    """argparse settings for one option, declared by one or more attacks."""
    attacks = ", ".join(a for a, _, _ in decls)
    _, f, tp = decls[0]
    # each distinct help text once; one default, or each attack's where they differ
    help_text = "; ".join(dict.fromkeys(d.metadata.get("help", d.name) for _, d, _ in decls))
    defaults: dict[str, list[str]] = {}
    for a, d, _ in decls:
        if d.default is not None and d.default is not dataclasses.MISSING:
            defaults.setdefault(str(d.default), []).append(a)
    default = ""
    if len(defaults) == 1 and len(next(iter(defaults.values()))) == len(decls):
        default = f" (default {next(iter(defaults))})"
    elif defaults:
        default = " (default " + "; ".join(f"{v} for {', '.join(names)}" for v, names in defaults.items()) + ")"
    if all(t is bool for _, _, t in decls):
        return {"action": argparse.BooleanOptionalAction, "help": f"{help_text}{default} [{attacks}]"}
    # one parser for every declaring attack: a TOML literal (3, 0.5, "s"); the chosen attack checks the type
    from lenetlab.config import parse_value

    return {"type": parse_value, "metavar": f.name.upper(), "help": f"{help_text}{default} [{attacks}]"}


def _options(a: argparse.Namespace) -> dict:
    return {k: getattr(a, k) for k in a.attack_options if getattr(a, k) is not None}


def cmd_attack(a: argparse.Namespace) -> int:
    import torch

    from lenetlab.attacks import Target, make_attack, run_attack
    from lenetlab.attacks.base import norm_name
    from lenetlab.data.datasets import load_raw
    from lenetlab.errors import LenetlabError
    from lenetlab.progress import progress_bar
    from lenetlab.registry import get
    from lenetlab.validate import L2_EPS_MAX

    # every argument is checked before anything is loaded or written
    cls = get("attack", a.attack)
    l2 = norm_name(_options(a).get("norm", "inf")) == "2"
    for e in a.eps:
        if l2 and not 0.0 <= e <= L2_EPS_MAX:
            raise LenetlabError(f"--eps with --norm 2 must be in [0, {L2_EPS_MAX:g}] (an L2 radius), got {e}")
        if not l2 and not 0.0 <= e <= 1.0:
            raise LenetlabError(f"--eps must be in [0, 1] (pixel units), got {e}")
    if a.limit is not None and a.limit <= 0:
        raise LenetlabError(f"--limit must be positive, got {a.limit}")
    if cls.needs_substitute and not a.substitute:
        raise LenetlabError(f"--attack {a.attack} needs --substitute RUN_DIR (a model to craft on)")
    if a.save_examples and len(a.eps) != 1:
        raise LenetlabError("--save-examples takes one --eps value")
    if a.save_examples and Path(a.save_examples).exists() and not Path(a.save_examples).is_dir():
        raise LenetlabError(f"{a.save_examples}: exists and is not a directory")
    from lenetlab import devices

    dev = devices.resolve(a.device)
    target = Target.from_run(a.run_dir, a.grad_source)
    substitute = Target.from_run(a.substitute) if a.substitute else None
    for t in (target, substitute):
        if t is not None:
            t.model.to(dev)
    _, _, xs, ys = load_raw(target.data.dataset, target.data.data_dir)
    n = min(len(xs), a.limit or len(xs))
    x01 = torch.from_numpy(xs[:n].copy()).float().div_(255.0).unsqueeze(1).to(dev)
    y = torch.from_numpy(ys[:n].astype("int64")).to(dev)
    opts = _options(a)
    rows, kept = [], None
    label = f"{a.attack} images" + (f" x {len(a.eps)} budgets" if len(a.eps) > 1 else "")
    with progress_bar(label, total=n * len(a.eps), quiet=a.quiet) as bar:
        for e in a.eps:
            atk = make_attack(a.attack, target, e, seed=a.seed, substitute=substitute, **opts)
            res, kept = run_attack(atk, x01, y, keep=bool(a.save_examples), progress=bar)
            rows.append({"eps": e, **res.as_dict()})
    if a.save_examples:
        _save(Path(a.save_examples), x01.cpu(), kept.cpu(), y.cpu(), target)
    if a.json:
        print(json.dumps({"run": str(a.run_dir), "attack": a.attack, "grad_source": a.grad_source,
                          "substitute": a.substitute, "rows": rows}))
        return 0
    sub = f", substitute {a.substitute}" if a.substitute else ""
    print(f"{a.attack} on {a.run_dir} (rule {target.rule}, gradient: {a.grad_source}{sub}), {n} test images")
    for r in rows:
        print(f"  eps {r['eps']:<6g} clean {100 * r['clean_accuracy']:6.2f}%  adversarial "
              f"{100 * r['adv_accuracy']:6.2f}%  success rate {100 * r['success_rate']:6.2f}%")
    if a.save_examples:
        print(f"adversarial examples -> {a.save_examples}")
    return 0


def _save(out: Path, x01, x_adv, y, target) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from lenetlab import devices
    from lenetlab.data import write_idx
    from lenetlab.fileio import save_figure

    out.mkdir(parents=True, exist_ok=True)
    imgs = (x_adv[:, 0].clamp(0, 1) * 255).round().numpy().astype(np.uint8)
    write_idx(out / "adversarial-images-idx3-ubyte", imgs)
    write_idx(out / "labels-idx1-ubyte", y.numpy().astype(np.uint8))
    k = min(10, len(x01))
    dev = devices.of(target.model)
    pred_c, pred_a = target.predict(x01[:k].to(dev)).cpu(), target.predict(x_adv[:k].to(dev)).cpu()
    fig, axes = plt.subplots(2, k, figsize=(1.3 * k, 3), squeeze=False)
    for j in range(k):
        for r, (img, pr) in enumerate(((x01[j, 0], pred_c[j]), (x_adv[j, 0], pred_a[j]))):
            ax = axes[r, j]
            ax.imshow(img.numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{int(pr)}", fontsize=9, color="black" if int(pr) == int(y[j]) else "red")
            ax.axis("off")
    fig.suptitle("top: clean, bottom: adversarial (title = prediction, red = wrong)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, out / "grid.png", dpi=100)   # atomic: a kill never leaves a cut-short image
    plt.close(fig)
