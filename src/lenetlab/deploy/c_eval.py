"""Run the C runtime from Python: logits and per-image latency of a flat file through ``lenet5_eval``.

:class:`CEvaluator` compiles ``lenet5_eval`` once (with no embedded model, the
file is passed with ``--model``) using the optimisation flags of the exported
Makefile, writes image sets as plain IDX files, and reads back the logits the
program writes with ``--logits``. Timing uses the program's own clock around
its inference loop (``--batch 1``: one image per call), so process start-up and
file reading are not counted. Used by ``lenetlab reproduce deploy``.

Example::

    from lenetlab.deploy.c_eval import CEvaluator
    c = CEvaluator("/tmp/cbuild")
    logits = c.logits("model.flat", images_u8)          # (N, 10) float32 or int32
    c.seconds_per_image("model.flat", images_u8[:200], repeat=5)
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import numpy as np

from lenetlab.deploy.c_runtime import THREAD_FLAGS, compile_program, model_source
from lenetlab.errors import LenetlabError

# the exported Makefile's defaults: what a user building the exported project gets
MAKEFILE_FLAGS = ("-std=c99", "-O3", "-march=native", "-ffp-contract=fast", "-fno-trapping-math", *THREAD_FLAGS)


class CEvaluator:
    """``lenet5_eval`` built in ``workdir``; runs flat files on uint8 image arrays."""

    def __init__(self, workdir: str | Path, flags: tuple[str, ...] = MAKEFILE_FLAGS, cc: str = "gcc"):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        stub = self.dir / "no_model.c"
        stub.write_text(model_source(b"", "no embedded model (lenet5_eval --model FILE)"))
        self.exe = compile_program("lenet5_eval", self.dir / "lenet5_eval", flags, cc=cc, model_c=stub)
        self._idx: dict[str, tuple[Path, Path]] = {}

    def _files(self, images: np.ndarray) -> tuple[Path, Path]:
        """Plain IDX files of ``images`` (and dummy labels), written once per distinct image set."""
        from lenetlab.data.idx import write_idx

        images = np.ascontiguousarray(images, np.uint8)
        if images.ndim != 3 or len(images) == 0:
            raise LenetlabError(f"expected uint8 images (N, H, W) with N >= 1, got shape {images.shape}")
        key = hashlib.sha256(images.tobytes() + repr(images.shape).encode()).hexdigest()[:16]
        if key not in self._idx:
            paths = (self.dir / f"images_{key}.idx", self.dir / f"labels_{key}.idx")
            write_idx(paths[0], images, compress=False)
            write_idx(paths[1], np.zeros(len(images), np.uint8), compress=False)
            self._idx[key] = paths
        return self._idx[key]

    def _run(self, model: str | Path, images: np.ndarray, *extra: str) -> dict[str, float]:
        img, lab = self._files(images)
        cmd = [str(self.exe), str(img), str(lab), "--model", str(model), *extra]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise LenetlabError(f"lenet5_eval failed on {model}: {r.stderr.strip() or r.stdout.strip()}")
        line = next((ln for ln in r.stdout.splitlines() if ln.startswith("accuracy ")), None)
        if line is None:
            raise LenetlabError(f"lenet5_eval printed no result line: {r.stdout.strip()!r}")
        words = line.split()
        return {k: float(v) for k, v in zip(words[::2], words[1::2])}

    def logits(self, model: str | Path, images: np.ndarray, threads: int = 1) -> np.ndarray:
        """Every image's logits: float32 for a float model, int32 for an int8 one, shape (N, classes).

        ``threads`` > 1 splits the batch across that many threads (the logits are the same bits).
        """
        from lenetlab.deploy import flat

        fm = flat.load(str(model))
        out = self.dir / "logits.bin"
        self._run(model, images, "--logits", str(out), "--threads", str(int(threads)))
        dtype = np.int32 if fm.dtype == "int8" else np.float32
        data = np.fromfile(out, dtype="<" + np.dtype(dtype).str[1:])
        out.unlink()
        return data.reshape(len(images), fm.num_classes)

    def seconds_per_image(self, model: str | Path, images: np.ndarray, repeat: int = 1) -> float:
        """Wall time per image, one image per runtime call, over ``repeat`` passes (the program's clock)."""
        r = self._run(model, images, "--batch", "1", "--repeat", str(int(repeat)))
        return r["seconds"] / (len(images) * int(repeat))

    def images_per_second(self, model: str | Path, images: np.ndarray, batch: int = 256, threads: int = 1,
                          repeat: int = 1) -> float:
        """Throughput with ``batch`` images per runtime call split across ``threads`` threads (the program's clock)."""
        r = self._run(model, images, "--batch", str(int(batch)), "--threads", str(int(threads)),
                      "--repeat", str(int(repeat)))
        return r["images_per_s"]
