"""The weights registry: shipped weights, cached downloads (no network), paths."""

import hashlib
import io
import shutil

import numpy as np
import pytest

from conftest import shared_path
from sapnet_jax import checkpoint, convert, download, pretrained


def test_shipped_weights_equal_the_official_checkpoint():
  shipped = checkpoint.flatten(checkpoint.params_dict(pretrained.load("sapnet-rain100h")))
  converted = convert.load_pth(str(shared_path("weights/sapnet_official/net_latest.pth")))
  official = checkpoint.flatten(checkpoint.params_dict(converted))
  assert shipped.keys() == official.keys()
  for k in shipped:
    np.testing.assert_array_equal(np.asarray(shipped[k]), np.asarray(official[k]), err_msg=k)


def test_licence_ships_beside_the_weights():
  text = open(f"{pretrained.WEIGHTS_DIR}/LICENSE-SAPNet.txt").read()
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
  checkpoint.save_model(model, tmp_path / "prn.npz")
  assert pretrained.load(str(tmp_path / "prn.npz")).cfg == model.cfg
  with pytest.raises(pretrained.UnknownWeightsError, match="sapnet-rain100h"):
    pretrained.load("sapnet-rain800")
