"""The derain command: every odd input kind, errors that name files, atomic outputs."""

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from conftest import REPO, shared_path
from imagefiles import jpeg_with_orientation, png16
from sapnet_jax import checkpoint, derain
from sapnet_jax.data.imageio import read_image
from sapnet_jax.models import pdu

RNG = np.random.default_rng(1)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
  # A small random model keeps compile times short; the command does not care which.
  path = tmp_path_factory.mktemp("w") / "tiny.npz"
  cfg = pdu.PDUConfig(channels=4, reduction=2, stages=2, num_blocks=2)
  checkpoint.save_model(pdu.PDUNet(cfg, rngs=nnx.Rngs(0)), path)
  return str(path)


def _odd_inputs(folder):
  """One file per odd kind; returns {stem: expected (height, width)}."""
  folder.mkdir()
  rgb = RNG.integers(0, 256, (21, 34, 3), dtype=np.uint8)
  Image.fromarray(rgb[..., 0]).save(folder / "grey.png")
  Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(folder / "rgba.png")
  png16(folder / "deep.png", RNG.integers(0, 65536, (21, 34, 3), dtype=np.uint16))
  png16(folder / "deepgrey.png", RNG.integers(0, 65536, (21, 34, 1), dtype=np.uint16))
  jpeg_with_orientation(folder / "rotated.jpg", rgb, 6)  # stored 21x34, shown 34x21
  Image.fromarray(rgb[:1, :1]).save(folder / "dot.png")
  Image.fromarray(rgb[:, :33]).save(folder / "odd.bmp")
  (folder / "README.txt").write_text("not an image, and not named .png: skipped in folders")
  return {"grey": (21, 34), "rgba": (21, 34), "deep": (21, 34), "deepgrey": (21, 34),
          "rotated": (34, 21), "dot": (1, 1), "odd": (21, 33)}


def test_every_odd_kind(tmp_path, tiny_weights, capsys):
  expected = _odd_inputs(tmp_path / "in")
  code = derain.main([str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--weights", tiny_weights])
  assert code == 0, capsys.readouterr().err
  written = sorted(p.name for p in (tmp_path / "out").iterdir())
  assert written == sorted(f"{stem}.png" for stem in expected)
  for stem, (h, w) in expected.items():
    im = Image.open(tmp_path / "out" / f"{stem}.png")
    assert im.mode == "RGB" and im.size == (w, h), stem


def test_bad_files_are_named_and_others_still_done(tmp_path, tiny_weights, capsys):
  good = tmp_path / "good.png"
  Image.fromarray(RNG.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(good)
  corrupt = tmp_path / "corrupt.jpg"
  corrupt.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
  text = tmp_path / "notes.txt"
  text.write_text("hello")
  out = tmp_path / "out"
  out.mkdir()
  (out / "corrupt.png").write_bytes(b"previous result")  # must survive the failed file
  code = derain.main([str(corrupt), str(good), str(text), str(tmp_path / "gone.png"),
                      "--out", str(out), "--weights", tiny_weights])
  err = capsys.readouterr().err
  assert code == 1
  lines = [line for line in err.splitlines() if line.startswith("error:")]
  assert len(lines) == 3 and all(len(line.splitlines()) == 1 for line in lines)
  assert any("corrupt.jpg" in line for line in lines)
  assert any("notes.txt: not an image" in line for line in lines)
  assert any("gone.png: no such file" in line for line in lines)
  assert (out / "good.png").exists()
  assert (out / "corrupt.png").read_bytes() == b"previous result"
  assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_name_clash_stops_before_writing(tmp_path, tiny_weights, capsys):
  for sub in ("a", "b"):
    (tmp_path / sub).mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / sub / "x.png")
  code = derain.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "out"),
                      "--weights", tiny_weights])
  assert code == 2
  assert "would both be written to" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()


def test_unknown_weights(tmp_path, capsys):
  assert derain.main([str(REPO / "examples"), "--out", str(tmp_path), "--weights", "nope"]) == 2
  assert "registered weights name" in capsys.readouterr().err


def test_tiling_flags_match_whole_image_on_local_net(tmp_path, capsys):
  cfg = pdu.PDUConfig(attention="none", dilation=False, stages=1, num_blocks=1, channels=4)
  weights = tmp_path / "local.npz"
  checkpoint.save_model(pdu.PDUNet(cfg, rngs=nnx.Rngs(0)), weights)
  Image.fromarray(RNG.integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(tmp_path / "big.png")
  overlap = 4 * cfg.receptive_radius + 4
  for name, flags in (("whole", ["--tile", "0"]), ("tiled", ["--tile", str(overlap + 8), "--overlap", str(overlap)])):
    assert derain.main([str(tmp_path / "big.png"), "--out", str(tmp_path / name),
                        "--weights", str(weights), *flags]) == 0
  whole = np.asarray(Image.open(tmp_path / "whole" / "big.png")).astype(int)
  tiled = np.asarray(Image.open(tmp_path / "tiled" / "big.png")).astype(int)
  assert np.abs(whole - tiled).max() <= 1  # equal up to rounding of float sums at a level edge


def test_official_weights_remove_rain_on_rain100h(tmp_path):
  rainy = shared_path("data/rain100h/rainy")
  names = ["001.png", "050.png", "100.png"]
  assert derain.main([str(rainy / n) for n in names] + ["--out", str(tmp_path)]) == 0
  for n in names:
    clean = read_image(rainy.parent / "clean" / n)
    before = 10 * np.log10(1 / np.mean((read_image(rainy / n) - clean) ** 2))
    after = 10 * np.log10(1 / np.mean((read_image(tmp_path / n) - clean) ** 2))
    assert after > before + 8, (n, before, after)
