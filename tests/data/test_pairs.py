"""Pairing rainy and clean files by name: two folders (evaluate) and archive layouts (builders)."""

import os

import pytest
from PIL import Image

from sapnet_jax.data import pairs
from sapnet_jax.data.pairs import Layout, LayoutError


def _image(path):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.new("RGB", (4, 3)).save(path)


@pytest.mark.parametrize("name,key", [("rain-001.png", "001"), ("norain-001.png", "001"),
                                      ("001.png", "001"), ("Rain_12.jpg", "12"),
                                      ("12_clean.png", "12"), ("12_rainy.jpg", "12"),
                                      ("gt-7.png", "7"), ("brain-3.png", "brain-3")])
def test_pair_key(name, key):
  assert pairs.pair_key(name) == key


def _touch(folder, names):
  folder.mkdir()
  for n in names:
    Image.new("RGB", (2, 2)).save(folder / n)


def test_pair_folders(tmp_path):
  _touch(tmp_path / "r", ["rain-001.png", "rain-002.png", "rain-003.png"])
  _touch(tmp_path / "c", ["norain-001.png", "norain-003.png", "norain-009.png"])
  (tmp_path / "r" / "notes.txt").write_text("ignored")
  p = pairs.pair_folders(str(tmp_path / "r"), str(tmp_path / "c"))
  assert [(a[-12:], b[-14:]) for a, b in p.pairs] == [("rain-001.png", "norain-001.png"),
                                                       ("rain-003.png", "norain-003.png")]
  assert [x[-12:] for x in p.rainy_only] == ["rain-002.png"]
  assert [x[-14:] for x in p.clean_only] == ["norain-009.png"]


def test_pair_folders_numbers_ignore_zero_padding_and_sort_naturally(tmp_path):
  # The PReNet archives name rain-1.png .. rain-100.png; other copies pad the clean names.
  _touch(tmp_path / "r", ["rain-1.png", "rain-2.png", "rain-10.png"])
  _touch(tmp_path / "c", ["norain-001.png", "norain-002.png", "norain-010.png"])
  p = pairs.pair_folders(str(tmp_path / "r"), str(tmp_path / "c"))
  assert [(os.path.basename(a), os.path.basename(b)) for a, b in p.pairs] == [
      ("rain-1.png", "norain-001.png"), ("rain-2.png", "norain-002.png"),
      ("rain-10.png", "norain-010.png")]
  assert not p.rainy_only and not p.clean_only


def test_ambiguous_names_and_missing_folder(tmp_path):
  _touch(tmp_path / "r", ["rain-001.png", "001.png"])
  _touch(tmp_path / "c", ["001.png"])
  with pytest.raises(ValueError, match=r"rainy files with the same pairing key \(rename one\): "
                                       r"001\.png and rain-001\.png"):
    pairs.pair_folders(str(tmp_path / "r"), str(tmp_path / "c"))
  with pytest.raises(FileNotFoundError, match="nowhere: no such folder"):
    pairs.pair_folders(str(tmp_path / "nowhere"), str(tmp_path / "c"))


# ---- archive layouts (the builders' pairing) -----------------------------------------------------
def test_numeric_keys_pair_across_zero_padding(tmp_path):
  for n in (1, 2, 10):
    _image(tmp_path / f"rain-{n}.png")
    _image(tmp_path / f"norain-{n:03d}.png")
  layout = Layout("flat", "", "", r"rain-(?P<key>\d+)", r"norain-(?P<key>\d+)")
  found = pairs.pairs_for_layout(str(tmp_path), layout)
  assert [p.name for p in found] == ["rain-1.png", "rain-2.png", "rain-10.png"]  # natural order
  assert [os.path.basename(p.clean) for p in found] == ["norain-001.png", "norain-002.png",
                                                         "norain-010.png"]


def test_unpaired_names_are_listed(tmp_path):
  for n in ("a", "b", "c"):
    _image(tmp_path / "rainy" / f"{n}.png")
  for n in ("a", "d"):
    _image(tmp_path / "clean" / f"{n}.png")
  with pytest.raises(LayoutError) as e:
    pairs.find_pairs(str(tmp_path), pairs.SAME_NAME_LAYOUTS)
  msg = str(e.value)
  assert "2 rainy file(s) without a clean partner: rainy/b.png, rainy/c.png" in msg
  assert "1 clean file(s) without a rainy partner: clean/d.png" in msg


def test_strays_and_duplicates_are_errors(tmp_path):
  flat = Layout("flat", "", "", r"rain-(?P<key>\d+)", r"norain-(?P<key>\d+)")
  _image(tmp_path / "a" / "rain-1.png")
  _image(tmp_path / "a" / "norain-1.png")
  _image(tmp_path / "a" / "holiday.jpg")
  with pytest.raises(LayoutError, match="fit no name.*holiday.jpg"):
    pairs.pairs_for_layout(str(tmp_path / "a"), flat)
  _image(tmp_path / "b" / "rain-1.png")
  _image(tmp_path / "b" / "rain-001.png")
  _image(tmp_path / "b" / "norain-1.png")
  with pytest.raises(LayoutError, match="rainy files with the same pairing key.*rain-001.png and "
                                        "rain-1.png"):
    pairs.pairs_for_layout(str(tmp_path / "b"), flat)


def test_list_file_pairs_and_missing_files(tmp_path):
  _image(tmp_path / "real_world" / "0" / "0_1.png")
  _image(tmp_path / "real_world_gt" / "0" / "0.png")
  (tmp_path / "real_world.txt").write_text(
      "/real_world/0/0_1.png /real_world_gt/0/0.png\n"
      "./real_world/0/0_2.png real_world_gt/0/0.png\n")
  with pytest.raises(LayoutError, match=r"1 listed file\(s\) missing.*real_world/0/0_2.png"):
    pairs.pairs_from_list(str(tmp_path / "real_world.txt"), str(tmp_path))


def test_split_folders_match_case_insensitively(tmp_path):
  (tmp_path / "rain100H").mkdir()
  assert pairs.find_folder(str(tmp_path), "Rain100H") == str(tmp_path / "rain100H")
  assert pairs.find_folder(str(tmp_path), "Rain100L") is None
