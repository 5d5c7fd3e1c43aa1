"""The hostile corpus (tests/support/hostile.py) against the file side: the image reader and the
derain command, run as a user runs it. Each kind gets its own clear outcome; nothing else
happens."""

import os
import re
import subprocess
import sys

import pytest
from flax import nnx

from support import hostile
from support.paths import REPO
from sapnet_jax.data import imageio
from sapnet_jax.models import pdu
from sapnet_jax.weights import model_files

BUDGET = 4_000_000  # pixels: the corpus's "big" files decode to 23 million
# The error each kind raises: a server answers by it (413, 415, 400).
RAISES = {"big": "ImageTooLargeError", "unsupported": "UnsupportedFormatError",
          "bad": "ImageReadError"}


@pytest.mark.parametrize("name", sorted(hostile.corpus()))
def test_each_kind_has_its_outcome(tmp_path, name):
  data, outcome = hostile.corpus()[name]
  (tmp_path / name).write_bytes(data)
  if outcome == "ok":
    assert imageio.read_image(tmp_path / name, max_pixels=BUDGET).shape[2] == 3
    return
  with pytest.raises(imageio.ImageReadError) as e:
    imageio.read_image(tmp_path / name, max_pixels=BUDGET)
  assert type(e.value).__name__ == RAISES[outcome], e.value  # "bad": neither subclass
  assert str(e.value).startswith(f"{tmp_path / name}: ") and "\n" not in str(e.value)


def test_derain_command_on_the_corpus(tmp_path):
  folder = tmp_path / "in"
  written = hostile.write_corpus(folder, ("ok", "unsupported", "bad"))
  (folder / hostile.FORGING_NAME).write_bytes(hostile.truncated(hostile.png(32, 32)))
  (folder / "good.png").write_bytes(hostile.png())
  weights = tmp_path / "tiny.npz"
  model_files.save_model(pdu.PDUNet(pdu.PDUConfig(channels=4, reduction=2, stages=2,
                                                  num_blocks=2), rngs=nnx.Rngs(0)), weights)
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "SAPNET_JAX_CPU_CONVS": "default"}
  proc = subprocess.run(
      [sys.executable, "-m", "sapnet_jax.derain", str(folder), "--out", str(tmp_path / "out"),
       "--format", "jpg", "--weights", str(weights), "--no-compile-cache"],
      env=env, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  lines = proc.stderr.splitlines()
  failing = sum(outcome != "ok" for outcome in written.values()) + 1  # + the forging name
  assert proc.returncode == 1, proc.stderr
  assert "Traceback" not in proc.stderr
  errors = [line for line in lines if line.startswith("error: ")]
  assert len(errors) == failing, proc.stderr
  warnings = [line for line in lines if line.startswith("warning: ")]
  assert len(warnings) == 1 and re.fullmatch(
      rf"warning: {re.escape(str(tmp_path / 'out' / 'big_exif.jpg'))}: EXIF metadata "
      r"\(200,\d{3} bytes\) dropped: JPEG cannot hold it \(.*\)", warnings[0]), warnings
  assert lines[-1] == f"de-rained 2 of {failing + 2} images into {tmp_path / 'out'}"
  assert sorted(os.listdir(tmp_path / "out")) == ["big_exif.jpg", "good.jpg"]
