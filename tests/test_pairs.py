"""Pairing rainy and clean files by name."""

import pytest
from PIL import Image

from sapnet_jax.data import pairs


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


def test_ambiguous_names_and_missing_folder(tmp_path):
  _touch(tmp_path / "r", ["rain-001.png", "001.png"])
  _touch(tmp_path / "c", ["001.png"])
  with pytest.raises(ValueError, match=r"rain-001\.png and 001\.png have the same pairing key|001\.png and rain-001\.png"):
    pairs.pair_folders(str(tmp_path / "r"), str(tmp_path / "c"))
  with pytest.raises(FileNotFoundError, match="nowhere: no such folder"):
    pairs.pair_folders(str(tmp_path / "nowhere"), str(tmp_path / "c"))
