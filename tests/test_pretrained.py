"""The weights registry: shipped weights, cached downloads (no network), paths."""

import dataclasses
import hashlib
import io
import json
import os
import shutil

import numpy as np
import pytest

from support.paths import shared_path
from sapnet_jax import pretrained
from sapnet_jax.weights import download, model_files, registry, torch_layout


def test_shipped_weights_equal_the_official_checkpoint():
  shipped = model_files.flatten(model_files.params_dict(pretrained.load("sapnet-rain100h")))
  converted = torch_layout.load_pth(str(shared_path("weights/sapnet_official/net_latest.pth")))
  official = model_files.flatten(model_files.params_dict(converted))
  assert shipped.keys() == official.keys()
  for k in shipped:
    np.testing.assert_array_equal(np.asarray(shipped[k]), np.asarray(official[k]), err_msg=k)


def test_licence_ships_beside_the_weights():
  text = open(f"{registry.WEIGHTS_DIR}/LICENSE-SAPNet.txt").read()
  assert "Copyright (c) 2021 ShenZheng2000" in text and "MIT License" in text


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
  monkeypatch.setenv("SAPNET_JAX_CACHE", str(tmp_path))

  def no_network(*args, **kwargs):
    raise OSError("network disabled in tests")

  monkeypatch.setattr(download.urllib.request, "urlopen", no_network)
  return tmp_path


def test_registered_download_uses_the_cache_offline(offline_cache):
  shutil.copy(shared_path("weights/prenet/Rain100H/PReNet6/net_latest.pth"),
              offline_cache / "prenet-rain100h.pth")
  model = pretrained.load("prenet-rain100h")
  assert model.cfg.attention == "none" and model.cfg.recurrent


def test_cache_with_wrong_hash_is_refused(offline_cache):
  (offline_cache / "prn-rain100h.pth").write_bytes(b"tampered")
  with pytest.raises(download.DownloadError, match="does not match the expected"):
    pretrained.load("prn-rain100h")


def test_offline_without_cache_explains(offline_cache):
  with pytest.raises(download.DownloadError, match="place it at .*prenet-rain100l.pth"):
    pretrained.load("prenet-rain100l")
  assert not list(offline_cache.iterdir())


def test_download_checks_hash_and_leaves_nothing_on_mismatch(offline_cache, monkeypatch):
  payload = b"weights" * 1000
  monkeypatch.setattr(download.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(payload))
  digest = hashlib.sha256(payload).hexdigest()
  path = download.fetch("https://example.invalid/w.pth", digest, "w.pth")
  assert open(path, "rb").read() == payload
  with pytest.raises(download.DownloadError, match="expected 0000"):
    download.fetch("https://example.invalid/x.pth", "0" * 64, "x.pth")
  assert sorted(p.name for p in offline_cache.iterdir()) == ["w.pth"]


def test_paths_and_unknown_names(tmp_path):
  model = pretrained.load(str(shared_path("weights/prenet/Rain100H/PRN6/net_latest.pth")))
  assert not model.cfg.recurrent
  model_files.save_model(model, tmp_path / "prn.npz")
  assert pretrained.load(str(tmp_path / "prn.npz")).cfg == model.cfg
  with pytest.raises(pretrained.UnknownWeightsError, match="sapnet-rain100h"):
    pretrained.load("sapnet-rain800")


# ---- the listing: python -m sapnet_jax.pretrained ---------------------------------------------
def _rows(capsys, *flags):
  assert pretrained.main(["--json", *flags]) == 0
  return {row["name"]: row for row in json.loads(capsys.readouterr().out)}


def test_listing_shows_cache_states_without_downloading(offline_cache, monkeypatch, capsys):
  # Cached with the right hash, tampered, absent; the network is off. A stand-in payload and
  # its hash keep this test free of ../shared (the real files' hashes: tests above).
  payload = b"official weights" * 100
  entry = dataclasses.replace(pretrained.REGISTRY["prenet-rain100h"],
                              sha256=hashlib.sha256(payload).hexdigest())
  monkeypatch.setitem(pretrained.REGISTRY, "prenet-rain100h", entry)
  (offline_cache / "prenet-rain100h.pth").write_bytes(payload)
  (offline_cache / "prn-rain100h.pth").write_bytes(b"tampered")
  rows = _rows(capsys)
  assert list(rows) == list(pretrained.REGISTRY)
  assert rows["sapnet-rain100h"]["state"] == "shipped" and rows["sapnet-rain100h"]["default"]
  assert [name for name, row in rows.items() if row["default"]] == [pretrained.DEFAULT]
  assert rows["prenet-rain100h"]["state"] == "cached"
  assert rows["prenet-rain100h"]["path"] == str(offline_cache / "prenet-rain100h.pth")
  assert rows["prn-rain100h"]["state"] == "wrong hash"
  assert rows["prenet-rain100l"]["state"] == "not downloaded"
  assert sorted(p.name for p in offline_cache.iterdir()) == ["prenet-rain100h.pth",
                                                             "prn-rain100h.pth"]
  assert pretrained.main([]) == 0
  text = capsys.readouterr().out
  assert "sapnet-rain100h  (default)" in text
  assert f"cached at {offline_cache / 'prenet-rain100h.pth'} (SHA-256 verified)" in text
  assert "SHA-256 does not match" in text and "not downloaded (fetched on first use" in text


def test_listing_names_source_and_licence(offline_cache, capsys):
  rows = _rows(capsys)
  shipped = rows["sapnet-rain100h"]
  assert shipped["shipped"] and shipped["licence"].startswith("MIT")
  assert shipped["source"] == "https://github.com/ShenZheng2000/SAPNet-for-image-deraining"
  assert os.path.exists(shipped["path"]) and shipped["path"].startswith(registry.WEIGHTS_DIR)
  for name in ("prenet-rain100h", "prenet-rain100l", "prn-rain100h"):
    row = rows[name]
    assert not row["shipped"] and row["source"] == pretrained.REGISTRY[name].url
    assert row["source"].startswith("https://github.com/csdwren/PReNet/")
    assert len(row["sha256"]) == 64
    assert "not redistributed" in row["licence"]
  assert not any(entry.file and not os.path.exists(os.path.join(registry.WEIGHTS_DIR, entry.file))
                 for entry in pretrained.REGISTRY.values())
