"""TFDS builders on tiny fake archive layouts, the errors for bad ones, and the real Rain100H.

Each fake layout is written with random pixels, built into a fresh data_dir with the prepare
function the CLI uses, read back through `tfds.data_source`, and compared pixel for pixel with
what `imageio.read_image` decodes from the source files.
"""

import os
import time

import numpy as np
import pytest
from PIL import Image

from support.paths import shared_path
from sapnet_jax.data import builders, imageio, prepare
from sapnet_jax.data.pairs import LayoutError

RNG = np.random.default_rng(0)


def _image(path, h=24, w=32, pixels=None, **save_kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pixels = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8) if pixels is None else pixels
  Image.fromarray(pixels).save(path, **save_kwargs)
  return pixels


def _records(b, split):
  import tensorflow_datasets as tfds
  source = b.as_data_source(split, decoders={k: tfds.decode.SkipDecoding()
                                             for k in ("rainy", "clean") if k in b.info.features})
  out = []
  for i in range(len(source)):
    r = source[i]
    out.append({"name": r["name"].decode(), "size": tuple(int(v) for v in r["size"]),
                **{k: builders.decode_record_image(r[k]) for k in ("rainy", "clean") if k in r}})
  return out


def _u8(path):
  return imageio.to_uint8(imageio.read_image(path))


# ---- builds -------------------------------------------------------------------------------------
def _fake_rain100h(root):
  """RainTrainH as in the PReNet archive (flat rain-N / norain-N, a gap where a pair was
  removed) and the test set as rainy/rain-N + norain-N (PReNet test archive)."""
  for n in (1, 2, 4):
    _image(root / "RainTrainH" / f"rain-{n}.png", 30, 40)
    _image(root / "RainTrainH" / f"norain-{n}.png", 30, 40)
  for n in (1, 2):
    _image(root / "Rain100H" / "rainy" / f"rain-{n:03d}.png", 20, 24)
    _image(root / "Rain100H" / f"norain-{n:03d}.png", 20, 24)
  return {"train": ["rain-1.png", "rain-2.png", "rain-4.png"],
          "test": ["rain-001.png", "rain-002.png"]}


def _fake_rain100l(root):
  """The PReNet layouts under train/ and test/ (the other folder names Rain100L accepts)."""
  for n in (1, 2):
    _image(root / "train" / "RainTrainL" / f"rain-{n}.png")
    _image(root / "train" / "RainTrainL" / f"norain-{n}.png")
  _image(root / "test" / "Rain100L" / "rain" / "rain-3.png")
  _image(root / "test" / "Rain100L" / "norain" / "norain-3.png")
  return {"train": ["rain-1.png", "rain-2.png"], "test": ["rain-3.png"]}


def _fake_rain12(root):
  for n in (1, 2, 12):
    _image(root / f"{n}_in.png")
    _image(root / f"{n}_GT.png")
  return {"test": ["1_in.png", "2_in.png", "12_in.png"]}


def _fake_rain1400(root):
  for n in (1, 2):
    _image(root / "training" / "ground_truth" / f"{n}.jpg", quality=95)
    for m in (1, 2, 14):
      _image(root / "training" / "rainy_image" / f"{n}_{m}.jpg", quality=95)
  _image(root / "testing" / "ground_truth" / "901.jpg", quality=95)
  _image(root / "testing" / "rainy_image" / "901_1.jpg", quality=95)
  return {"train": ["1_1.jpg", "1_2.jpg", "1_14.jpg", "2_1.jpg", "2_2.jpg", "2_14.jpg"],
          "test": ["901_1.jpg"]}


def _fake_spa(root):
  for n in (1, 2):
    _image(root / "real_world" / "000" / f"000_{n}.png")
    _image(root / "real_world_gt" / "000" / f"000_{n}.png")
  (root / "real_world.txt").write_text(
      "".join(f"/real_world/000/000_{n}.png /real_world_gt/000/000_{n}.png\n" for n in (1, 2)))
  _image(root / "test" / "rain" / "rain-5.png")
  _image(root / "test" / "norain" / "norain-5.png")
  return {"train": ["real_world/000/000_1.png", "real_world/000/000_2.png"],
          "test": ["rain-5.png"]}


def _fake_paired(root):
  _image(root / "rainy" / "b.jpg", quality=90)
  _image(root / "clean" / "b.png")
  _image(root / "rainy" / "a.png", mode="L", pixels=RNG.integers(0, 256, (24, 32), np.uint8))
  _image(root / "clean" / "a.png")
  return {"train": ["a.png", "b.jpg"]}


def _fake_real(root):
  _image(root / "x.jpg", quality=90)
  _image(root / "sub" / "y.png")
  (root / "notes.txt").write_text("not an image")
  return {"train": ["sub/y.png", "x.jpg"]}


FAKES = {"rain100h": _fake_rain100h, "rain100l": _fake_rain100l, "rain12": _fake_rain12,
         "rain1400": _fake_rain1400, "spa_data": _fake_spa, "paired_folder": _fake_paired,
         "real_rain": _fake_real}


@pytest.mark.parametrize("name", sorted(FAKES))
def test_builder_round_trip(tmp_path, name):
  manual = tmp_path / "archive"
  expected = FAKES[name](manual)
  b = prepare.build(name, data_dir=str(tmp_path / "data"), manual_dir=str(manual))
  assert sorted(b.info.splits) == sorted(expected)
  for split, names in expected.items():
    records = _records(b, split)
    assert [r["name"] for r in records] == names
    assert b.info.metadata["sizes"][split] == [list(r["size"]) for r in records]
    pairs = builders.BUILDERS[name]().find_splits(str(manual))[split]
    for r, pair in zip(records, pairs):
      np.testing.assert_array_equal(r["rainy"], _u8(pair.rainy))
      assert r["size"] == r["rainy"].shape[:2]
      if pair.clean is not None:
        np.testing.assert_array_equal(r["clean"], _u8(pair.clean))
      else:
        assert "clean" not in r


def test_rain800_splits_side_by_side_pairs(tmp_path):
  pixels = _image(tmp_path / "archive" / "training" / "1.png", 10, 16)
  _image(tmp_path / "archive" / "test_syn" / "rainy" / "7.png", 10, 8)
  _image(tmp_path / "archive" / "test_syn" / "clean" / "7.png", 10, 8)
  b = prepare.build("rain800", data_dir=str(tmp_path / "data"),
                    manual_dir=str(tmp_path / "archive"))
  (train,) = _records(b, "train")
  np.testing.assert_array_equal(train["clean"], pixels[:, :8])
  np.testing.assert_array_equal(train["rainy"], pixels[:, 8:])
  assert [r["name"] for r in _records(b, "test")] == ["7.png"]


def test_unpaired_names_stop_the_build_and_are_listed(tmp_path):
  for n in (1, 2, 3):
    _image(tmp_path / "a" / "RainTrainL" / f"rain-{n}.png")
  _image(tmp_path / "a" / "RainTrainL" / "norain-1.png")
  _image(tmp_path / "a" / "RainTrainL" / "norain-7.png")
  with pytest.raises(LayoutError) as e:
    prepare.build("rain100l", data_dir=str(tmp_path / "d"), manual_dir=str(tmp_path / "a"))
  msg = str(e.value)
  assert "RainTrainL: unpaired names" in msg
  assert "2 rainy file(s) without a clean partner: rain-2.png, rain-3.png" in msg
  assert "1 clean file(s) without a rainy partner: norain-7.png" in msg
  assert not prepare.builder("rain100l", str(tmp_path / "d")).is_prepared()


def test_wrong_layout_says_what_was_expected(tmp_path):
  _image(tmp_path / "archive" / "photos" / "rain-1.png")
  with pytest.raises(LayoutError) as e:
    prepare.build("rain100h", data_dir=str(tmp_path / "data"),
                  manual_dir=str(tmp_path / "archive"))
  msg = str(e.value)
  assert str(tmp_path / "archive") in msg and "photos/" in msg
  assert "RainTrainH/" in msg and "Rain100H/" in msg
  assert "rain-N.png and norain-N.png side by side" in msg
  # A split folder that exists but is mis-laid names that folder.
  _image(tmp_path / "archive2" / "Rain100H" / "rainy" / "001.png")
  _image(tmp_path / "archive2" / "Rain100H" / "truth" / "001.png")
  with pytest.raises(LayoutError, match=r"(?s)Rain100H: no supported layout found.*truth/"):
    prepare.build("rain100h", data_dir=str(tmp_path / "data"),
                  manual_dir=str(tmp_path / "archive2"))


def test_mismatched_sizes_name_both_files(tmp_path):
  _image(tmp_path / "a" / "rainy" / "1.png", 10, 12)
  _image(tmp_path / "a" / "clean" / "1.png", 10, 14)
  with pytest.raises(LayoutError, match=r"rainy/1.png is 12x10 but its clean partner .*clean/1"):
    prepare.build("paired_folder", data_dir=str(tmp_path / "d"), manual_dir=str(tmp_path / "a"))


def test_corrupt_image_names_file_and_leaves_nothing_to_reuse(tmp_path):
  _image(tmp_path / "a" / "rainy" / "1.png")
  _image(tmp_path / "a" / "clean" / "1.png")
  _image(tmp_path / "a" / "rainy" / "2.png")
  bad = tmp_path / "a" / "clean" / "2.png"
  bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
  data = str(tmp_path / "d")
  with pytest.raises(imageio.ImageReadError, match=str(bad)):
    prepare.build("paired_folder", data_dir=data, manual_dir=str(tmp_path / "a"))
  assert not prepare.builder("paired_folder", data).is_prepared()
  # Fixing the file and building again works: the failed build left no half dataset behind.
  _image(bad)
  b = prepare.build("paired_folder", data_dir=data, manual_dir=str(tmp_path / "a"))
  assert b.info.splits["train"].num_examples == 2


def test_prepare_is_idempotent(tmp_path, capsys):
  _fake_paired(tmp_path / "a")
  args = ["--dataset", "paired_folder", "--manual_dir", str(tmp_path / "a"),
          "--data_dir", str(tmp_path / "d")]
  # What a killed build leaves behind: a half-written folder that must not be reused.
  stale = tmp_path / "d" / "paired_folder" / "incomplete.KILLED_1.0.0"
  stale.mkdir(parents=True)
  (stale / "paired_folder-train.array_record-00000-of-00001").write_bytes(b"half")
  assert prepare.main(args) == 0
  out = capsys.readouterr()
  assert "built in" in out.out and "(train: 2)" in out.out
  assert "incomplete.KILLED_1.0.0 is left from an interrupted build" in out.err
  info = tmp_path / "d" / "paired_folder" / "1.0.0" / "dataset_info.json"
  mtime = info.stat().st_mtime_ns
  time.sleep(0.01)
  assert prepare.main(args) == 0
  assert "reused" in capsys.readouterr().out
  assert info.stat().st_mtime_ns == mtime


def test_prepare_reports_errors_without_traceback(tmp_path, capsys):
  assert prepare.main(["--dataset", "rain100h", "--data_dir", str(tmp_path)]) == 2
  assert "--manual_dir is required" in capsys.readouterr().err
  assert prepare.main(["--dataset", "rain99", "--data_dir", str(tmp_path)]) == 2
  assert "unknown dataset 'rain99'" in capsys.readouterr().err


# ---- the real Rain100H test set -----------------------------------------------------------------
def test_shared_rain100h_builds_and_round_trips(tmp_path):
  root = shared_path("data/rain100h")
  start = time.perf_counter()
  b = prepare.build("rain100h", data_dir=str(tmp_path), manual_dir=str(root))
  seconds = time.perf_counter() - start
  assert dict(b.info.splits.items())["test"].num_examples == 100
  assert "train" not in b.info.splits
  records = _records(b, "test")
  assert [r["name"] for r in records] == [f"{n:03d}.png" for n in range(1, 101)]
  for r in records:
    np.testing.assert_array_equal(r["rainy"], _u8(root / "rainy" / r["name"]))
    np.testing.assert_array_equal(r["clean"], _u8(root / "clean" / r["name"]))
    assert r["size"] == r["rainy"].shape[:2] and sorted(r["size"]) == [320, 480]
  print(f"rain100h test split: built in {seconds:.1f} s, 100/100 pairs decode equal to the PNGs")
