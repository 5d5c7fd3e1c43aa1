"""The frozen networks of the losses against PyTorch: VGG-16, ResNet encoder + official FPN.

Fixture: tests/fixtures/loss_parity.npz, made by tests/fixtures/make_loss_fixtures.py with
torchvision 0.28 / torch 2.13 (see its docstring). VGG-16 uses the ImageNet weights in
../shared (HWIO -> OIHW into torchvision's `vgg16().features`); our side converts a
torchvision-layout state_dict built from the same file. No ResNet-101 ImageNet weights exist
here, so the ResNet/FPN check uses seeded NumPy weights (tests/fixtures/numpy_state_dicts.py)
that the dev script loaded into torchvision's ResNet(Bottleneck, [1, 2, 1, 1]) and the official
decoder; the full ResNet-101 layout is checked key by key and shape by shape.
Tolerance: 1e-4 of the largest magnitude of each compared activation (float32 on both sides,
different summation orders); measured worst cases are printed by the asserts on failure.
"""

import jax
import numpy as np
import pytest
from flax import nnx

from support.paths import FIXTURES, shared_path
from fixtures import numpy_state_dicts
from sapnet_jax.models import alexnet, resnet_fpn, vgg
from sapnet_jax.weights import backbones, model_files, torch_layout

REL = 1e-4
FX = np.load(FIXTURES / "loss_parity.npz")


def rel_err(ours, ref):
  return float(np.abs(np.asarray(ours) - ref).max() / np.abs(ref).max())


def torchvision_vgg_state_dict(npz):
  """The ../shared HWIO arrays laid out as torchvision's vgg16 state_dict (plus a classifier)."""
  sd = {}
  for idx, name in zip(backbones._VGG16_CONVS, backbones._VGG16_NAMES):
    sd[f"features.{idx}.weight"] = npz[f"{name}/kernel"].transpose(3, 2, 0, 1)
    sd[f"features.{idx}.bias"] = npz[f"{name}/bias"]
  sd["classifier.0.weight"] = np.zeros((4, 8), np.float32)
  return sd


@pytest.fixture(scope="module")
def vgg_npz():
  return dict(np.load(shared_path("weights/vgg16_imagenet/vgg16_features_hwio.npz")))


def test_vgg16_matches_torchvision(vgg_npz):
  flat = backbones.vgg16_from_state_dict(torchvision_vgg_state_dict(vgg_npz))
  for k, v in flat.items():  # the converter restores the HWIO arrays exactly
    np.testing.assert_array_equal(v, vgg_npz[k])
  net = model_files.fill_params(nnx.eval_shape(lambda: vgg.VGG16Features(rngs=nnx.Rngs(0))),
                                flat, "t")
  x = FX["clean"][:1].astype(np.float32) / 255.0
  feats = jax.jit(lambda x: net(x, outputs=vgg.LPIPS_LAYERS))(x)
  for name in vgg.LPIPS_LAYERS:
    ref = FX[f"vgg/{name}"]
    s = x.shape[1] // ref.shape[1] // (2 ** vgg.LPIPS_LAYERS.index(name))
    ours = np.asarray(feats[name])[:, ::s, ::s]
    assert ours.shape == ref.shape, name
    assert rel_err(ours, ref) <= REL, (name, rel_err(ours, ref))


def test_vgg16_stops_at_last_layer():
  net = vgg.VGG16Features(last="relu2_2", widths=(4, 4, 4, 4, 4), rngs=nnx.Rngs(0))
  assert not hasattr(net, "conv3_1")
  out = net(np.zeros((1, 8, 8, 3), np.float32), outputs=("relu1_2", "relu2_2"))
  assert out["relu2_2"].shape == (1, 4, 4, 4)
  with pytest.raises(ValueError, match="relu3_3"):
    net(np.zeros((1, 8, 8, 3), np.float32), outputs=("relu3_3",))


def test_alexnet_converter_roundtrip():
  npz = dict(np.load(shared_path("weights/alexnet_imagenet/alexnet_features_hwio.npz")))
  sd = {f"features.{i}.weight": npz[f"conv{k + 1}/kernel"].transpose(3, 2, 0, 1)
        for k, i in enumerate(backbones._ALEXNET_CONVS)}
  sd |= {f"features.{i}.bias": npz[f"conv{k + 1}/bias"] for k, i in enumerate(backbones._ALEXNET_CONVS)}
  flat = backbones.alexnet_from_state_dict(sd)
  assert sorted(flat) == sorted(npz)
  for k in flat:
    np.testing.assert_array_equal(flat[k], npz[k])
  net = model_files.fill_params(nnx.eval_shape(lambda: alexnet.AlexNetFeatures(rngs=nnx.Rngs(0))),
                                flat, "t")
  out = net(np.zeros((1, 64, 64, 3), np.float32))
  assert [out[k].shape[1] for k in alexnet.LAYERS] == [15, 7, 3, 3, 3]  # torchvision's sizes


def _seg_net(sd, depths=(1, 2, 1, 1)):
  cfg = resnet_fpn.ResNetFPNConfig(depths=depths)
  net = nnx.eval_shape(lambda: resnet_fpn.ResNetFPN(cfg, rngs=nnx.Rngs(0)))
  return model_files.fill_params(net, backbones.fpn_from_state_dict(sd), "seeded", variables=...)


@pytest.fixture(scope="module")
def seg_net():
  return _seg_net(numpy_state_dicts.fpn_state_dict(seed=0))


def test_resnet_fpn_matches_pytorch(seg_net):
  x = FX["clean"][:2].astype(np.float32) / 255.0
  cs = jax.jit(lambda x: seg_net.resnet(x))(x)
  for name, c in zip(("c2", "c3", "c4", "c5"), cs):
    ref = FX[f"resnet/{name}"]
    ours = np.asarray(c)[..., ::c.shape[-1] // ref.shape[-1]]
    assert ours.shape == ref.shape, name
    assert rel_err(ours, ref) <= REL, (name, rel_err(ours, ref))
  logits = jax.jit(seg_net)(x)
  assert logits.shape == FX["fpn/logits"].shape == (2, 16, 16, 21)
  assert rel_err(logits, FX["fpn/logits"]) <= REL


def test_torchvision_and_timm_resnet_encoders_load(seg_net):
  # timm's resnet101 uses torchvision's names; a `module.`/`model.` prefix is stripped.
  sd = numpy_state_dicts.resnet_state_dict(seed=0)
  for prefix in ("", "model."):
    flat = backbones.resnet_from_state_dict({prefix + k: v for k, v in sd.items()})
    ref = model_files.flatten(nnx.to_pure_dict(nnx.state(seg_net.resnet)))
    assert sorted(flat) == sorted(ref)
    for k in flat:
      np.testing.assert_array_equal(flat[k], np.asarray(ref[k]))


def test_resnet101_layout_is_complete():
  # Every tensor of a torchvision ResNet-101 state_dict lands on a variable of the right shape.
  sd = numpy_state_dicts.resnet_state_dict(resnet_fpn.RESNET_DEPTHS[101], shapes_only=True)
  flat = backbones.resnet_from_state_dict(sd)
  net = nnx.eval_shape(lambda: resnet_fpn.ResNet(resnet_fpn.ResNetFPNConfig(), nnx.Rngs(0)))
  ref = model_files.flatten(nnx.to_pure_dict(nnx.state(net)))
  assert sorted(flat) == sorted(ref)
  assert all(flat[k].shape == ref[k].shape for k in flat)
  params = sum(int(np.prod(v.shape)) for k, v in sd.items() if "running" not in k
               and "num_batches" not in k and not k.startswith("fc."))
  assert params == 42_500_160  # torchvision resnet101 (44,549,160) minus its fc layer


def test_resnet_converter_names_bad_keys():
  sd = numpy_state_dicts.resnet_state_dict(seed=0)
  bad = dict(sd)
  del bad["layer2.1.bn2.running_var"]
  with pytest.raises(torch_layout.ConversionError, match="layer2.1.bn2.running_var"):
    backbones.resnet_from_state_dict(bad)
  with pytest.raises(torch_layout.ConversionError, match="layer9.0.extra"):
    backbones.resnet_from_state_dict({**sd, "layer9.0.extra": np.zeros(1, np.float32)})
  with pytest.raises(torch_layout.ConversionError, match="deep-stem"):
    backbones.resnet_from_state_dict({**sd, "conv1.0.weight": np.zeros((1, 1, 1, 1), np.float32)})


def test_upsampling_is_pytorch_bilinear_half_pixel():
  # F.interpolate(bilinear, align_corners=False) 2 -> 5 on [0, 1], worked out by hand:
  # source x = (i + 0.5) * 2/5 - 0.5 = -0.3, 0.1, 0.5, 0.9, 1.3 -> clamp below at 0, above at 1.
  x = np.array([0.0, 1.0], np.float32).reshape(1, 2, 1, 1) * np.ones((1, 1, 2, 1), np.float32)
  y = np.asarray(resnet_fpn.resize_bilinear(x, (5, 2)))[0, :, 0, 0]
  np.testing.assert_allclose(y, [0.0, 0.1, 0.5, 0.9, 1.0], atol=1e-6)
