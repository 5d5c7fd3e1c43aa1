"""The compare command: several models on the same images, one table and one labelled figure."""

import json

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from sapnet_jax import compare, infer
from sapnet_jax.data.imageio import read_image
from sapnet_jax.metrics import no_reference
from sapnet_jax.models import msnet, pdu
from sapnet_jax.weights import model_files

RNG = np.random.default_rng(5)


def _photos(root, sizes=((100, 200), (200, 100), (96, 192))):
  root.mkdir(parents=True)
  for i, (h, w) in enumerate(sizes):
    yy, xx = np.mgrid[0:h, 0:w]
    base = 120 + 60 * np.sin(xx / (5.0 + i)) * np.cos(yy / 9.0)
    img = np.clip(base[..., None] + RNG.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(root / f"p{i}.png")
  return root


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  root = tmp_path_factory.mktemp("w")
  tiny_pdu = pdu.PDUNet(pdu.PDUConfig(channels=4, reduction=2, stages=2, num_blocks=2),
                        rngs=nnx.Rngs(0))
  tiny_ms = msnet.MSNet(msnet.MSNetConfig(units=1, channels=4, cclb_depth=1, feature_layers=1),
                        rngs=nnx.Rngs(1))
  model_files.save_model(tiny_pdu, root / "pdu.npz")
  model_files.save_model(tiny_ms, root / "ms" / "checkpoints", step=3)  # a training workdir
  return [("pdu", str(root / "pdu.npz")), ("ms", str(root / "ms" / "checkpoints"))]


def test_scores_each_model_and_draws_one_labelled_row_per_image(tmp_path, models, capsys):
  real = _photos(tmp_path / "real")
  out = tmp_path / "out"
  args = ["--rainy", str(real), "--out", str(out), "--count", "2"]
  for label, path in models:
    args += ["--model", f"{label}={path}"]
  assert compare.main(args) == 0
  summary = json.loads((out / "comparison.json").read_text())
  assert list(summary["means"]) == ["pdu", "ms"]
  for label, path in models:
    report = json.loads((out / label / "metrics.json").read_text())
    assert report["count"] == 3 and summary["means"][label] == report["means"]
    # Each model's saved output is its own rounded de-raining, scored by the published NIQE.
    derainer = infer.Derainer(model_files.load_model(path))
    for row in report["images"]:
      saved = read_image(out / label / "outputs" / row["name"])
      want = np.round(np.clip(derainer(read_image(real / row["name"])), 0, 1) * 255) / 255
      np.testing.assert_allclose(saved, want, atol=1 / 255 + 1e-6)
      assert row["niqe"] == pytest.approx(no_reference.niqe(saved), abs=1e-6)
  assert summary["means"]["pdu"]["niqe"] != summary["means"]["ms"]["niqe"]
  table = (out / "comparison.md").read_text().splitlines()
  assert table[0].startswith("| model | niqe ↓") and [r.split(" | ")[0] for r in table[2:]] == ["| pdu", "| ms"]
  grid = np.asarray(Image.open(out / "grid.png"))
  # rainy | pdu | ms: two image rows (the first two names) of 200 px under an 18 px header.
  widths = [round(w * 200 / h) for h, w in ((100, 200), (200, 100))]
  assert grid.shape[0] == 18 + 2 * 204 + 4 and grid.shape[1] == 3 * max(widths) + 4 * 4
  assert (grid[:18] < 128).any(), "the header has no label text"
  assert "| pdu |" in capsys.readouterr().out


def test_bad_model_spec_and_duplicate_labels_are_errors(tmp_path, models, capsys):
  real = _photos(tmp_path / "real")
  base = ["--rainy", str(real), "--out", str(tmp_path / "o")]
  assert compare.main(base + ["--model", "a=" + models[0][1], "--model", "a=" + models[1][1]]) == 1
  assert "labels must differ" in capsys.readouterr().err
  assert compare.main(base + ["--model", "x=does/not/exist"]) == 1
  assert "does/not/exist" in capsys.readouterr().err
  assert compare.main(base + ["--model", "a=" + models[0][1], "--images", "p0.png,nope.png"]) == 1
  assert "nope.png" in capsys.readouterr().err
  assert compare.main(base + ["--model", "=sapnet-rain100h"]) == 1
  assert "LABEL=NAME|PATH" in capsys.readouterr().err


def test_bad_flags_and_an_input_out_folder_stop_before_any_work(tmp_path, models, capsys):
  real = _photos(tmp_path / "real", sizes=((20, 24),))
  before = sorted(p.name for p in real.iterdir())
  for flags, message in ((["--tile", "48", "--out", str(tmp_path / "o")],
                          "--overlap 64 must be smaller than --tile 48"),
                         (["--count", "0", "--out", str(tmp_path / "o")],
                          "--count: must be >= 1, got 0"),
                         (["--out", str(real)], "it is an input folder")):
    with pytest.raises(SystemExit) as exit_info:
      compare.main(["--model", f"pdu={models[0][1]}", "--rainy", str(real), *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err.splitlines()[-1] and "Traceback" not in err, err
  assert not (tmp_path / "o").exists() and sorted(p.name for p in real.iterdir()) == before
