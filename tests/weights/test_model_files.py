"""Saving and loading models: Orbax directories and .npz files."""

import json

import numpy as np
import pytest
from flax import nnx

from sapnet_jax.models import pdu
from sapnet_jax.weights import model_files

CFG = pdu.PDUConfig(channels=8, reduction=4, stages=2)


@pytest.fixture(scope="module")
def model():
  return pdu.PDUNet(CFG, rngs=nnx.Rngs(7))


@pytest.mark.parametrize("name", ["ck", "w.npz"])
def test_round_trip(tmp_path, model, name):
  model_files.save_model(model, tmp_path / name)
  loaded = model_files.load_model(tmp_path / name)
  assert loaded.cfg == CFG
  x = np.random.default_rng(0).random((1, 10, 12, 3), dtype=np.float32)
  np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
  scanned = model_files.load_model(tmp_path / name, scan=True)
  assert scanned.cfg.scan
  np.testing.assert_allclose(np.asarray(scanned(x)), np.asarray(model(x)), atol=1e-5)


def test_orbax_step_directory_and_latest(tmp_path, model):
  model_files.save_model(model, tmp_path / "ck", step=3)
  other = pdu.PDUNet(CFG, rngs=nnx.Rngs(8))
  model_files.save_model(other, tmp_path / "ck", step=9)
  x = np.full((1, 6, 6, 3), 0.3, np.float32)
  latest = model_files.load_model(tmp_path / "ck")
  np.testing.assert_array_equal(np.asarray(latest(x)), np.asarray(other(x)))
  step3 = model_files.load_model(tmp_path / "ck" / "3")
  np.testing.assert_array_equal(np.asarray(step3(x)), np.asarray(model(x)))


def test_npz_with_wrong_parameters_is_refused(tmp_path, model):
  model_files.save_model(model, tmp_path / "w.npz")
  data = dict(np.load(tmp_path / "w.npz"))
  data["conv0/kernel"] = data["conv0/kernel"][:, :, :3]
  np.savez(tmp_path / "altered.npz", **data)  # still carrying the digest of the saved arrays
  with pytest.raises(model_files.CheckpointError, match=r"altered\.npz: checksum mismatch"):
    model_files.load_model(tmp_path / "altered.npz")
  del data[model_files.DIGEST_KEY]  # a hand-made file: loaded unverified, its shapes checked
  np.savez(tmp_path / "bad_shape.npz", **data)
  with pytest.raises(model_files.CheckpointError, match=r"bad_shape\.npz: conv0/kernel has shape"):
    model_files.load_model(tmp_path / "bad_shape.npz")
  config = json.loads(str(data["__model_config__"]))
  data["__model_config__"] = np.array(json.dumps({**config, "attention": "none"}))
  np.savez(tmp_path / "bad_config.npz", **data)
  with pytest.raises(model_files.CheckpointError, match=r"bad_config\.npz: parameters do not match"):
    model_files.load_model(tmp_path / "bad_config.npz")


def test_unreadable_inputs(tmp_path):
  with pytest.raises(model_files.CheckpointError, match="no such file"):
    model_files.load_model(tmp_path / "nothing.npz")
  (tmp_path / "junk.npz").write_bytes(b"junk")
  with pytest.raises(model_files.CheckpointError, match=r"junk\.npz: not a readable"):
    model_files.load_model(tmp_path / "junk.npz")
  (tmp_path / "empty").mkdir()
  with pytest.raises(model_files.CheckpointError, match="no Orbax checkpoint"):
    model_files.load_model(tmp_path / "empty")
  np.savez(tmp_path / "plain.npz", a=np.zeros(2))
  with pytest.raises(model_files.CheckpointError, match="not a sapnet_jax weights file"):
    model_files.load_model(tmp_path / "plain.npz")
