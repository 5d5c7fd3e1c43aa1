"""Converting official checkpoints: parity with PyTorch, key/shape checks, the CLI.

Parity fixtures (tests/fixtures/pdu_<arch>.npz) hold the outputs of every stage of the
official architecture in PyTorch (tests/fixtures/torch_reference.py, loaded strictly from the
official .pth) for a seeded random batch and for a 96x80 crop of Rain100H rainy/001.png, made
by tests/fixtures/make_fixtures.py. Tolerance: 1e-4 max abs difference (the port's parity
bound, far below an 8-bit step of 1/255); measured differences are below 4e-6.
"""

import numpy as np
import pytest

from support.paths import FIXTURES, shared_path
from sapnet_jax import convert, pretrained
from sapnet_jax.models import pdu
from sapnet_jax.weights import backbones, model_files, torch_layout
from sapnet_jax.weights.pth import load_state_dict

OFFICIAL = {"sapnet": "weights/sapnet_official/net_latest.pth",
            "prenet": "weights/prenet/Rain100H/PReNet6/net_latest.pth",
            "prn": "weights/prenet/Rain100H/PRN6/net_latest.pth"}
TOL = 1e-4


def _model(arch, scan, impl="reference"):
  if arch == "sapnet":  # shipped inside the package: runs without ../shared too
    return pretrained.load("sapnet-rain100h", scan=scan, impl=impl)
  return torch_layout.load_pth(str(shared_path(OFFICIAL[arch])), scan=scan, impl=impl)


@pytest.mark.parametrize("impl", ["reference", "cpu"])
@pytest.mark.parametrize("scan", [False, True], ids=["loop", "scan"])
@pytest.mark.parametrize("arch", ["sapnet", "prenet", "prn"])
def test_parity_with_pytorch(arch, scan, impl):
  fx = np.load(FIXTURES / f"pdu_{arch}.npz")
  model = _model(arch, scan, impl)
  assert model.cfg.impl == impl
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
  assert torch_layout.infer_arch(load_state_dict(shared_path(OFFICIAL[arch]))) == arch


def _official_sd():
  return load_state_dict(shared_path(OFFICIAL["sapnet"]))


def test_missing_key_is_named():
  sd = _official_sd()
  del sd["module.res_conv3.4.conv_1_1.weight"]
  with pytest.raises(torch_layout.ConversionError, match=r"missing keys: res_conv3\.4\.conv_1_1\.weight"):
    torch_layout.pdu_from_state_dict(sd, pdu.SAPNET)


def test_unused_key_is_named():
  sd = _official_sd()
  sd["module.extra.weight"] = np.zeros((3,), np.float32)
  with pytest.raises(torch_layout.ConversionError, match=r"unused keys: extra\.weight"):
    torch_layout.pdu_from_state_dict(sd, pdu.SAPNET)


def test_wrong_shape_is_named():
  sd = _official_sd()
  sd["module.conv_g.0.weight"] = np.zeros((32, 64, 5, 5), np.float32)
  with pytest.raises(torch_layout.ConversionError, match=r"conv_g\.0\.weight: shape"):
    torch_layout.pdu_from_state_dict(sd, pdu.SAPNET)
  sd = _official_sd()
  sd["module.conv0.0.weight"] = np.zeros((32, 3, 3, 3), np.float32)
  with pytest.raises(torch_layout.ConversionError, match=r"conv0\.0\.weight: shape"):
    torch_layout.pdu_from_state_dict(sd, pdu.SAPNET)


def test_wrong_arch_lists_the_difference():
  with pytest.raises(torch_layout.ConversionError, match=r"does not match prenet: .*unused keys: res_conv1\.1\.conv_1_1"):
    torch_layout.load_pth(str(shared_path(OFFICIAL["sapnet"])), arch="prenet")


def test_unknown_layout():
  with pytest.raises(torch_layout.ConversionError, match="cannot tell the architecture"):
    torch_layout.infer_arch({"fc.weight": np.zeros(2)})


def test_cli_writes_orbax_and_npz(tmp_path, capsys):
  src = str(shared_path(OFFICIAL["prenet"]))
  assert convert.main([src, "--arch", "prenet", "--out", str(tmp_path / "ck")]) == 0
  assert convert.main([src, "--out", str(tmp_path / "w.npz")]) == 0
  assert "168,963 parameters" in capsys.readouterr().out
  reference = torch_layout.load_pth(src)
  x = np.random.default_rng(1).random((1, 9, 11, 3), dtype=np.float32)
  for path in (tmp_path / "ck", tmp_path / "w.npz"):
    model = model_files.load_model(path)
    assert model.cfg == pdu.PRENET
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(reference(x)))


def test_cli_error_exit(tmp_path, capsys):
  bad = tmp_path / "bad.pth"
  bad.write_bytes(b"not a checkpoint")
  assert convert.main([str(bad), "--out", str(tmp_path / "o")]) == 1
  assert "bad.pth" in capsys.readouterr().err
  assert not (tmp_path / "o").exists()


# --- backbones of the losses ---------------------------------------------------------------

@pytest.mark.parametrize("net,widths", [("vgg", (64, 128, 256, 512, 512)),
                                        ("alex", (64, 192, 384, 256, 256))])
def test_lpips_heads_from_the_lpips_pth(net, widths):
  # The lpips package's own v0.1 files (PyTorch zip checkpoints), read without PyTorch.
  path = shared_path(f"weights/lpips/{net}_v0.1.pth")
  flat = backbones.load_backbone(str(path), f"lpips_{net}")
  sd = load_state_dict(path)
  assert [flat[f"lin{k}"].shape for k in range(5)] == [(c,) for c in widths]
  for k in range(5):
    np.testing.assert_array_equal(flat[f"lin{k}"], sd[f"lin{k}.model.1.weight"][0, :, 0, 0])
    assert flat[f"lin{k}"].min() >= 0  # LPIPS v0.1 heads are trained non-negative


def test_backbone_cli_writes_npz_that_loads_back(tmp_path, capsys):
  src = str(shared_path("weights/lpips/alex_v0.1.pth"))
  out = tmp_path / "lpips_alex.npz"
  assert convert.main([src, "--arch", "lpips_alex", "--out", str(out)]) == 0
  assert "lpips_alex, 5 arrays, 1,152 values" in capsys.readouterr().out
  again = backbones.load_backbone(str(out), "lpips_alex")  # a converted .npz is taken as it is
  ref = backbones.load_backbone(src, "lpips_alex")
  assert sorted(again) == sorted(ref) and all(np.array_equal(again[k], ref[k]) for k in ref)
  assert convert.main([src, "--arch", "lpips_alex", "--out", str(tmp_path / "x")]) == 1
  assert "FILE.npz" in capsys.readouterr().err


def test_load_backbone_names_the_file(tmp_path):
  bad = tmp_path / "vgg.pth"
  bad.write_bytes(b"garbage")
  with pytest.raises(torch_layout.ConversionError, match="vgg.pth"):
    backbones.load_backbone(str(bad), "vgg16")
  with pytest.raises(torch_layout.ConversionError, match="unknown backbone"):
    backbones.load_backbone(str(bad), "vgg19")
  lpips = str(shared_path("weights/lpips/alex_v0.1.pth"))
  with pytest.raises(torch_layout.ConversionError, match=r"alex_v0.1.pth: no key ending in 'features.0.weight'"):
    backbones.load_backbone(lpips, "vgg16")


def test_download_checks_hash_and_uses_cache(tmp_path, monkeypatch):
  # --download without network: a file:// URL stands for download.pytorch.org.
  from sapnet_jax.weights import download
  payload = tmp_path / "remote" / "alex.pth"
  payload.parent.mkdir()
  payload.write_bytes(shared_path("weights/lpips/alex_v0.1.pth").read_bytes())
  sha = download.sha256_of(str(payload))
  assert sha == backbones.DOWNLOADS["lpips_alex"][1]  # the pinned hash is the real file's
  monkeypatch.setenv("SAPNET_JAX_CACHE", str(tmp_path / "cache"))
  monkeypatch.setitem(backbones.DOWNLOADS, "lpips_alex", (payload.as_uri(), sha))
  out = tmp_path / "la.npz"
  assert convert.main(["--download", "lpips_alex", "--out", str(out)]) == 0
  cached = tmp_path / "cache" / "lpips_alex_v0.1.pth"
  assert cached.read_bytes() == payload.read_bytes()
  payload.unlink()  # a second run must not touch the network
  assert backbones.fetch_backbone("lpips_alex") == str(cached)
  cached.write_bytes(b"corrupt")  # a damaged cache entry is refused, naming the file
  with pytest.raises(download.DownloadError, match="lpips_alex_v0.1.pth: SHA-256"):
    backbones.fetch_backbone("lpips_alex")
  cached.unlink()
  wrong = tmp_path / "remote" / "wrong.pth"
  wrong.write_bytes(b"other bytes")
  monkeypatch.setitem(backbones.DOWNLOADS, "lpips_alex", (wrong.as_uri(), sha))
  with pytest.raises(download.DownloadError, match="expected " + sha):
    backbones.fetch_backbone("lpips_alex")
  assert not cached.exists()  # nothing half-written stays in the cache


def test_torchvision_download_table():
  # torchvision checks the 8 hex digits in its file names against the SHA-256; so do we.
  for name in ("vgg16", "alexnet", "resnet101"):
    url, sha = backbones.DOWNLOADS[name]
    assert url.startswith("https://download.pytorch.org/models/")
    assert url.rsplit("-", 1)[-1] == sha[:8] + ".pth" and len(sha) == 64


def test_safetensors_reader(tmp_path):
  import json
  import struct
  from sapnet_jax.weights.pth import load_safetensors
  a = np.arange(6, dtype=np.float32).reshape(2, 3)
  b = np.array([1.5, -2.0], np.float32)
  b_bf16 = (b.view(np.uint32) >> 16).astype(np.uint16)  # exact in bf16
  header = {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
            "b": {"dtype": "BF16", "shape": [2], "data_offsets": [24, 28]},
            "__metadata__": {"format": "pt"}}
  raw = json.dumps(header).encode()
  path = tmp_path / "m.safetensors"
  path.write_bytes(struct.pack("<Q", len(raw)) + raw + a.tobytes() + b_bf16.tobytes())
  got = load_safetensors(path)
  np.testing.assert_array_equal(got["a"], a)
  np.testing.assert_array_equal(got["b"], b)
  assert set(got) == {"a", "b"}
