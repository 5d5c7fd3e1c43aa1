"""Converting official checkpoints: parity with PyTorch, key/shape checks, the CLI.

Parity fixtures (tests/fixtures/pdu_<arch>.npz) hold the outputs of every stage of the
official architecture in PyTorch (tests/fixtures/torch_reference.py, loaded strictly from the
official .pth) for a seeded random batch and for a 96x80 crop of Rain100H rainy/001.png, made
by tests/fixtures/make_fixtures.py. Tolerance: 1e-4 max abs difference (the issue's bound);
measured differences are below 4e-6.
"""

import numpy as np
import pytest

from conftest import FIXTURES, shared_path
from sapnet_jax import checkpoint, convert, pretrained
from sapnet_jax.models import pdu
from sapnet_jax.pth import load_state_dict

OFFICIAL = {"sapnet": "weights/sapnet_official/net_latest.pth",
            "prenet": "weights/prenet/Rain100H/PReNet6/net_latest.pth",
            "prn": "weights/prenet/Rain100H/PRN6/net_latest.pth"}
TOL = 1e-4


def _model(arch, scan):
  if arch == "sapnet":  # shipped inside the package: runs without ../shared too
    return pretrained.load("sapnet-rain100h", scan=scan)
  return convert.load_pth(str(shared_path(OFFICIAL[arch])), scan=scan)


@pytest.mark.parametrize("scan", [False, True], ids=["loop", "scan"])
@pytest.mark.parametrize("arch", ["sapnet", "prenet", "prn"])
def test_parity_with_pytorch(arch, scan):
  fx = np.load(FIXTURES / f"pdu_{arch}.npz")
  model = _model(arch, scan)
  real = fx["real_uint8"].astype(np.float32)[None] / 255.0
  for inputs, stages in ((fx["random_input"], fx["random_stages"]), (real, fx["real_stages"])):
    y, ours = model(inputs, return_stages=True)
    assert ours.shape == stages.shape
    assert np.abs(np.asarray(ours) - stages).max() <= TOL
    assert np.abs(np.asarray(y) - stages[-1]).max() <= TOL


def test_fixture_crop_is_the_real_image():
  # The real-image fixture is a crop of the Rain100H PNG, read the way derain reads it.
  from sapnet_jax.data.imageio import read_image
  fx = np.load(FIXTURES / "pdu_sapnet.npz")
  (r0, r1), (c0, c1) = fx["real_crop"]
  image = read_image(shared_path("data/rain100h/rainy/001.png"))
  np.testing.assert_array_equal(np.round(image[r0:r1, c0:c1] * 255).astype(np.uint8), fx["real_uint8"])


@pytest.mark.parametrize("arch", ["sapnet", "prenet", "prn"])
def test_infer_arch(arch):
  assert convert.infer_arch(load_state_dict(shared_path(OFFICIAL[arch]))) == arch


def _official_sd():
  return load_state_dict(shared_path(OFFICIAL["sapnet"]))


def test_missing_key_is_named():
  sd = _official_sd()
  del sd["module.res_conv3.4.conv_1_1.weight"]
  with pytest.raises(convert.ConversionError, match=r"missing keys: res_conv3\.4\.conv_1_1\.weight"):
    convert.pdu_from_state_dict(sd, pdu.SAPNET)


def test_unused_key_is_named():
  sd = _official_sd()
  sd["module.extra.weight"] = np.zeros((3,), np.float32)
  with pytest.raises(convert.ConversionError, match=r"unused keys: extra\.weight"):
    convert.pdu_from_state_dict(sd, pdu.SAPNET)


def test_wrong_shape_is_named():
  sd = _official_sd()
  sd["module.conv_g.0.weight"] = np.zeros((32, 64, 5, 5), np.float32)
  with pytest.raises(convert.ConversionError, match=r"conv_g\.0\.weight: shape"):
    convert.pdu_from_state_dict(sd, pdu.SAPNET)
  sd = _official_sd()
  sd["module.conv0.0.weight"] = np.zeros((32, 3, 3, 3), np.float32)
  with pytest.raises(convert.ConversionError, match=r"conv0\.0\.weight: shape"):
    convert.pdu_from_state_dict(sd, pdu.SAPNET)


def test_wrong_arch_lists_the_difference():
  with pytest.raises(convert.ConversionError, match=r"does not match prenet: .*unused keys: res_conv1\.1\.conv_1_1"):
    convert.load_pth(str(shared_path(OFFICIAL["sapnet"])), arch="prenet")


def test_unknown_layout():
  with pytest.raises(convert.ConversionError, match="cannot tell the architecture"):
    convert.infer_arch({"fc.weight": np.zeros(2)})


def test_cli_writes_orbax_and_npz(tmp_path, capsys):
  src = str(shared_path(OFFICIAL["prenet"]))
  assert convert.main([src, "--arch", "prenet", "--out", str(tmp_path / "ck")]) == 0
  assert convert.main([src, "--out", str(tmp_path / "w.npz")]) == 0
  assert "168,963 parameters" in capsys.readouterr().out
  reference = convert.load_pth(src)
  x = np.random.default_rng(1).random((1, 9, 11, 3), dtype=np.float32)
  for path in (tmp_path / "ck", tmp_path / "w.npz"):
    model = checkpoint.load_model(path)
    assert model.cfg == pdu.PRENET
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(reference(x)))


def test_cli_error_exit(tmp_path, capsys):
  bad = tmp_path / "bad.pth"
  bad.write_bytes(b"not a checkpoint")
  assert convert.main([str(bad), "--out", str(tmp_path / "o")]) == 1
  assert "bad.pth" in capsys.readouterr().err
  assert not (tmp_path / "o").exists()
