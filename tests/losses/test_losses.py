"""The training losses: parity with the official/PyPI implementations, gradients, frozen nets.

Fixture: tests/fixtures/loss_parity.npz (tests/fixtures/make_loss_fixtures.py, torch 2.13,
torchvision 0.28, lpips 0.1.4): six 64x64 Rain100H crops, the official pytorch_ssim SSIM of
six pairs, `lpips.LPIPS(net=vgg|alex)(x, y, normalize=True)` of the same pairs at 64x64 and
after bilinear resizing to 256x256, and the official FocalLoss of a seeded ResNet-FPN.
Tolerances: SSIM 1e-5 absolute (the port's parity bound, below the 4 decimals SSIM is
reported to), LPIPS 1e-4 absolute (values 0.2-0.7), focal 1e-4 relative; all float32 on both
sides.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from support.paths import FIXTURES, shared_path
from fixtures import numpy_state_dicts
from configs import default
from sapnet_jax.losses import frozen_nets, sapnet
from sapnet_jax.models import alexnet, resnet_fpn, vgg
from sapnet_jax.weights import backbones, model_files

FX = np.load(FIXTURES / "loss_parity.npz")
PAIRS = ((("clean", 0), ("rainy", 0)), (("clean", 1), ("rainy", 1)), (("clean", 2), ("rainy", 2)),
         (("clean", 3), ("clean", 4)), (("rainy", 4), ("rainy", 5)), (("clean", 5), ("rainy", 3)))
TINY_SEG = resnet_fpn.ResNetFPNConfig(depths=(1, 1, 1, 1), width=8, fpn_channels=16,
                                      smooth_channels=8)


def pair_batches():
  f = {k: FX[k].astype(np.float32) / 255.0 for k in ("clean", "rainy")}
  return (np.stack([f[a][i] for (a, i), _ in PAIRS]), np.stack([f[b][j] for _, (b, j) in PAIRS]))


def test_ssim_matches_official_pytorch_ssim():
  x, y = pair_batches()
  ours = np.array([float(sapnet.ssim(x[i:i + 1], y[i:i + 1])) for i in range(len(PAIRS))])
  np.testing.assert_allclose(ours, FX["ssim"], rtol=0, atol=1e-5)
  assert float(sapnet.ssim_loss(x[:1], x[:1])) == pytest.approx(-1.0, abs=1e-6)


def test_ssim_on_non_square_images_matches_a_direct_2d_window():
  # Reference: the 11x11 Gaussian window applied directly (zero padding, float64 numpy), on
  # images whose height and width differ, so that swapped blur axes would show.
  rng = np.random.default_rng(0)
  x = rng.random((2, 13, 17, 3))
  y = np.clip(x + 0.2 * rng.standard_normal(x.shape), 0, 1)
  g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
  g /= g.sum()
  w = np.outer(g, g)

  def blur(a):
    p = np.pad(a, ((0, 0), (5, 5), (5, 5), (0, 0)))
    return sum(w[i, j] * p[:, i:i + a.shape[1], j:j + a.shape[2]] for i in range(11) for j in range(11))

  mu1, mu2 = blur(x), blur(y)
  s11, s22, s12 = blur(x * x) - mu1**2, blur(y * y) - mu2**2, blur(x * y) - mu1 * mu2
  c1, c2 = 0.01**2, 0.03**2
  ref = np.mean((2 * mu1 * mu2 + c1) * (2 * s12 + c2) / ((mu1**2 + mu2**2 + c1) * (s11 + s22 + c2)))
  assert float(sapnet.ssim(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))) == (
      pytest.approx(ref, abs=1e-5))


@pytest.fixture(scope="module")
def weights():
  return {"vgg": str(shared_path("weights/vgg16_imagenet/vgg16_features_hwio.npz")),
          "alex": str(shared_path("weights/alexnet_imagenet/alexnet_features_hwio.npz")),
          "lpips_vgg": str(shared_path("weights/lpips/vgg_v0.1.pth")),
          "lpips_alex": str(shared_path("weights/lpips/alex_v0.1.pth"))}


def loss_config(weights, **overrides):
  cfg = default.get_config().loss
  cfg.update(dict(vgg_weights=weights["vgg"], alexnet_weights=weights["alex"],
                  lpips_weights=weights["lpips_alex"], seg_weight=0.0, lpips_size=64))
  cfg.update(overrides)
  return cfg


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_lpips_matches_lpips_package(weights, net):
  cfg = loss_config(weights, lpips_net=net, lpips_weights=weights[f"lpips_{net}"],
                    contrast="none")
  frozen = frozen_nets.build_frozen_nets(cfg)
  trunk = frozen.vgg if net == "vgg" else frozen.alexnet
  x, y = pair_batches()
  heads = frozen.lpips_heads.as_dict()
  f = jax.jit(lambda x, y, size: sapnet.lpips(trunk, heads, x, y, net=net, size=size),
              static_argnums=2)
  np.testing.assert_allclose(f(x, y, None), FX[f"lpips_{net}"], rtol=0, atol=1e-4)
  # The paper's whole-image variant: resized to 256x256 (bilinear upsampling as PyTorch's).
  np.testing.assert_allclose(f(x[:2], y[:2], 256), FX[f"lpips_{net}_256"][:2], rtol=0, atol=1e-4)


def test_seg_focal_matches_official_focal_loss():
  cfg = resnet_fpn.ResNetFPNConfig(depths=(1, 2, 1, 1))
  net = nnx.eval_shape(lambda: resnet_fpn.ResNetFPN(cfg, rngs=nnx.Rngs(0)))
  net = model_files.fill_params(net, backbones.fpn_from_state_dict(
      numpy_state_dicts.fpn_state_dict(seed=0)), "t", variables=...)
  x = FX["clean"][:2].astype(np.float32) / 255.0
  ours = float(jax.jit(lambda x: sapnet.seg_focal(net, x))(x))
  assert ours == pytest.approx(float(FX["fpn/focal"]), rel=1e-4)


@pytest.fixture(scope="module")
def setup():
  """Every term on, through narrow random VGG/AlexNet/LPIPS heads and a tiny seeded ResNet-FPN:
  the same code paths as the real networks (whose values the parity tests above check) at a
  fraction of the CPU time. LPIPS-Alex at 64x64."""
  cfg = default.get_config().loss
  cfg.update(dict(lpips_size=64, seg_weight=0.1))
  widths = (4, 4, 4, 4, 4)
  rngs = nnx.Rngs(0)
  heads = frozen_nets.LPIPSHeads({f"lin{k}": np.full(4, 0.1, np.float32) for k in range(5)})
  frozen = frozen_nets.FrozenNets(
      vgg.VGG16Features(last="relu4_3", widths=widths, rngs=rngs),
      alexnet.AlexNetFeatures(widths=widths, rngs=rngs), heads,
      frozen_nets.build_seg_net(TINY_SEG, None, seed=0))
  rng = np.random.default_rng(0)
  clean = rng.uniform(0.1, 0.9, (2, 32, 32, 3)).astype(np.float32)
  rainy = np.clip(clean + rng.uniform(0, 0.4, clean.shape), 0, 1).astype(np.float32)
  derained = (0.5 * clean + 0.5 * rainy).astype(np.float32)
  return cfg, frozen, derained, clean, rainy


def test_total_loss_terms_and_weights(setup):
  cfg, frozen, d, c, r = setup
  total, terms = jax.jit(lambda fr, d, e: sapnet.total_loss(cfg, fr, d, c, r, epoch=e))(
      frozen, d, jnp.int32(60))
  assert sorted(terms) == ["lpips", "pcl", "seg", "ssim"]
  expected = (cfg.ssim_weight * terms["ssim"] + cfg.contrast_weight * terms["pcl"]
              + cfg.lpips_weight * terms["lpips"] + cfg.seg_weight * terms["seg"])
  assert float(total) == pytest.approx(float(expected), rel=1e-6)
  assert -1 < float(terms["ssim"]) < 0 and float(terms["pcl"]) > 0 and float(terms["seg"]) > 0
  # Before config.loss.seg_start_epoch (official: epoch > 50) the seg term is 0, also traced.
  _, early = jax.jit(lambda fr, d, e: sapnet.total_loss(cfg, fr, d, c, r, epoch=e))(
      frozen, d, jnp.int32(50))
  assert float(early["seg"]) == 0.0
  assert float(early["pcl"]) == pytest.approx(float(terms["pcl"]), rel=1e-6)
  # Training passes fractional epochs (step / steps per epoch); a fractional start is honoured.
  cfg_frac = ml_collections.ConfigDict({**cfg.to_dict(), "seg_start_epoch": 1.5})
  step = jax.jit(lambda fr, d, e: sapnet.total_loss(cfg_frac, fr, d, c, r, epoch=e)[1]["seg"])
  assert float(step(frozen, d, jnp.float32(1.49))) == 0.0
  assert float(step(frozen, d, jnp.float32(1.5))) == pytest.approx(float(terms["seg"]), rel=1e-5)


def test_every_term_has_finite_nonzero_gradients(setup):
  cfg, frozen, d, c, r = setup

  def terms(d):
    _, t = sapnet.total_loss(cfg, frozen, d, c, r, epoch=100)
    return jnp.stack([t[k] for k in ("ssim", "pcl", "lpips", "seg")])

  grads = np.asarray(jax.jit(jax.jacrev(terms))(d))
  for name, g in zip(("ssim", "pcl", "lpips", "seg"), grads):
    assert np.all(np.isfinite(g)), name
    assert np.abs(g).max() > 0, name  # LPIPS: the official code's float() cut this to 0


def test_frozen_nets_get_no_gradient_and_no_update(setup):
  cfg, frozen, d, c, r = setup
  model = nnx.Conv(3, 3, (3, 3), rngs=nnx.Rngs(1))  # a stand-in de-raining network
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  before = jax.tree.map(np.array, nnx.state(frozen))

  @nnx.jit
  def step(model, optimizer, frozen):
    def loss_fn(model, frozen):
      return sapnet.total_loss(cfg, frozen, model(r), c, r, epoch=100)
    (_, terms), (g_model, g_frozen) = nnx.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
        model, frozen)
    optimizer.update(model, g_model)
    return terms, g_model, g_frozen

  w0 = np.array(model.kernel[...])
  _, g_model, g_frozen = step(model, optimizer, frozen)
  assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(g_frozen))
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(g_model))
  assert not np.array_equal(w0, model.kernel[...])  # the model did train
  after = jax.tree.map(np.array, nnx.state(frozen))
  jax.tree.map(np.testing.assert_array_equal, before, after)
  # The optimizer state holds the model's two arrays' moments only, nothing of the frozen nets.
  n_model = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  n_opt = sum(x.size for x in jax.tree.leaves(nnx.state(optimizer.opt_state))
              if getattr(x, "ndim", 0) > 0)
  assert n_opt == 2 * n_model


def test_seg_term_is_fixed_across_calls_and_builds(setup):
  cfg, frozen, d, c, r = setup
  f = jax.jit(lambda fr, d: sapnet.total_loss(cfg, fr, d, c, r, epoch=100)[1]["seg"])
  a, b = float(f(frozen, d)), float(f(frozen, d))
  assert a == b
  again = frozen_nets.build_seg_net(TINY_SEG, None, seed=0)
  assert float(jax.jit(lambda x: sapnet.seg_focal(again, x))(d)) == pytest.approx(a / 1, rel=1e-6)
  other = frozen_nets.build_seg_net(TINY_SEG, None, seed=1)
  assert float(jax.jit(lambda x: sapnet.seg_focal(other, x))(d)) != pytest.approx(a, rel=1e-6)


def test_build_frozen_nets_resnet101_random_is_logged(weights, caplog):
  cfg = loss_config(weights, contrast="none", lpips_weight=0.0, seg_weight=0.1)
  frozen = frozen_nets.build_frozen_nets(cfg)
  assert frozen.vgg is None and frozen.alexnet is None and frozen.lpips_heads is None
  assert len(frozen.seg.resnet.layer3) == 23
  assert "random" in frozen.notes[0] and "seg_encoder_weights" in caplog.text
  std = np.asarray(frozen.seg.fpn.smooth1_1.kernel[...]).std()
  assert std == pytest.approx(cfg.seg_decoder_init_std, rel=0.02)  # official N(0, 0.01)


def test_bad_images_are_named(setup):
  cfg, frozen, d, c, r = setup
  call = lambda d=d, c=c, r=r: sapnet.total_loss(cfg, frozen, d, c, r, epoch=0)  # noqa: E731
  with pytest.raises(ValueError, match="clean has shape"):
    call(c=c[:, :16])
  with pytest.raises(ValueError, match=r"rainy must have shape \(N, H, W, 3\)"):
    call(r=np.concatenate([r, r[..., :1]], -1))
  with pytest.raises(ValueError, match=r"derained must have shape"):
    call(d=d[0])
  with pytest.raises(ValueError, match=r"clean has values in \[25.5.*expected \[0, 1\]"):
    call(c=c * 255)
  with pytest.raises(ValueError, match="derained contains NaN"):
    call(d=np.full_like(d, np.nan))


def test_nonfinite_output_reaches_the_terms(setup):
  cfg, frozen, d, c, r = setup
  # Under jit nothing can be checked eagerly: a NaN in the output reaches the terms, which the
  # trainer checks after each step and names (tests/training/test_train_step.py).
  _, terms = jax.jit(lambda d: sapnet.total_loss(cfg, frozen, d, c, r, epoch=0))(
      jnp.asarray(d).at[0, 0, 0, 0].set(jnp.nan))
  assert not np.isfinite(float(terms["ssim"]))


def test_config_errors_name_the_field(weights):
  with pytest.raises(sapnet.LossConfigError, match="config.loss.vgg_weights is None"):
    frozen_nets.build_frozen_nets(loss_config(weights, vgg_weights=None))
  with pytest.raises(sapnet.LossConfigError, match="config.loss.lpips_net"):
    frozen_nets.build_frozen_nets(loss_config(weights, lpips_net="squeeze"))
  with pytest.raises(sapnet.LossConfigError, match="lpips_weights does not match"):
    frozen_nets.build_frozen_nets(loss_config(weights, lpips_net="vgg", contrast="none"))
  with pytest.raises(sapnet.LossConfigError, match="config.loss.contrast"):
    frozen_nets.build_frozen_nets(loss_config(weights, contrast="l2"))


def test_l1_contrastive_and_no_cl():
  from configs import contrast_ablation
  x = np.full((1, 8, 8, 3), 0.5, np.float32)
  assert float(sapnet.l1_contrastive(x, x + 0.1, x + 0.3)) == pytest.approx(1 / 3, rel=1e-5)
  cfg = contrast_ablation.get_config("l1_cl").loss
  cfg.update(dict(lpips_weight=0.0, seg_weight=0.0))
  total, terms = sapnet.total_loss(cfg, frozen_nets.build_frozen_nets(cfg), x, x + 0.1, x + 0.3)
  assert sorted(terms) == ["l1_cl", "ssim"]
  cfg = contrast_ablation.get_config("no_cl").loss
  cfg.update(dict(lpips_weight=0.0, seg_weight=0.0))
  assert sorted(sapnet.total_loss(cfg, frozen_nets.build_frozen_nets(cfg), x, x, x)[1]) == ["ssim"]


def test_pixel_l1_term_of_the_demo_config():
  from configs import demo
  cfg = demo.get_config().loss
  rng = np.random.default_rng(0)
  clean = rng.uniform(0.2, 0.8, (2, 16, 16, 3)).astype(np.float32)
  derained = clean + rng.uniform(-0.1, 0.1, clean.shape).astype(np.float32)
  total, terms = sapnet.total_loss(cfg, frozen_nets.build_frozen_nets(cfg), derained, clean, clean)
  assert sorted(terms) == ["l1", "ssim"]
  assert float(terms["l1"]) == pytest.approx(np.abs(derained - clean).mean(), rel=1e-5)
  assert float(total) == pytest.approx(cfg.ssim_weight * float(terms["ssim"])
                                       + cfg.l1_weight * float(terms["l1"]), rel=1e-5)
