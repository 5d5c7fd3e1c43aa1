"""The MSNet network (Qiu et al. 2022): shapes, parameter counts, gradients, registry; its
losses are tested in tests/losses/test_msnet.py."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sapnet_jax import models
from sapnet_jax.losses import msnet as ml
from sapnet_jax.models import msnet
from sapnet_jax.weights import model_files

TINY = msnet.MSNetConfig(units=2, channels=8, cclb_depth=2)


def _conv(cin, cout):
  return 9 * cin * cout + cout


def _expected_count(cfg):
  """Parameters of MSNet(cfg) by formula: convs, dense 1x1 fuses, output fuse and conv."""
  c, u = cfg.channels, cfg.units
  linear = lambda cin, cout: cin * cout + cout
  matching = _conv(3, c) + (cfg.feature_layers - 1) * _conv(c, c)
  units = u * cfg.scales * cfg.cclb_depth * _conv(c, c)
  fuses = sum(linear((k + 1) * c, c) for k in range(1, u)) + linear((u + 1) * c, c)
  return matching + units + fuses + _conv(c, 3)


def _count(cfg):
  return models.count_params(nnx.eval_shape(lambda: msnet.MSNet(cfg, rngs=nnx.Rngs(0))))


def _numpy_init(cfg, seed=0):
  """MSNet(cfg) with random weights drawn in numpy: eager jax.random initialisation compiles
  one kernel per parameter shape, tens of seconds on a loaded 2-core CPU."""
  model = nnx.eval_shape(lambda: msnet.MSNet(cfg, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(seed)
  state = nnx.state(model, nnx.Param)
  def draw(leaf):
    fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 10
    return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(fan_in), jnp.float32)
  nnx.replace_by_pure_dict(state, jax.tree.map(draw, nnx.to_pure_dict(state)))
  nnx.update(model, state)
  return model


@pytest.fixture(scope="module")
def tiny():
  return _numpy_init(TINY)


# --- the network ----------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [TINY, msnet.MSNET], ids=["tiny", "default"])
@pytest.mark.parametrize("shape", [(1, 1, 1, 3), (2, 5, 7, 3), (1, 37, 53, 3), (1, 101, 99, 3)])
def test_output_and_feature_shapes_equal_input(cfg, shape):
  # Sizes not divisible by the largest pool (4) come back uncropped and unpadded. Shapes are
  # fixed at trace time, so tracing (no compile, no run) checks them.
  out = jax.eval_shape(lambda x: msnet.MSNet(cfg, rngs=nnx.Rngs(0))(x, return_features=True),
                       jax.ShapeDtypeStruct(shape, jnp.float32))
  assert out[0].shape == shape and out[0].dtype == jnp.float32
  assert out[1].shape == shape[:3] + (cfg.channels,)


def test_forward_on_an_odd_size(tiny):
  x = jax.random.uniform(jax.random.key(0), (2, 5, 7, 3))
  y, feats = tiny(x, return_features=True)
  assert y.shape == x.shape and feats.shape == (2, 5, 7, TINY.channels)
  assert np.isfinite(np.asarray(y)).all()
  np.testing.assert_array_equal(tiny(x), y)
  np.testing.assert_array_equal(tiny.features(x), feats)


def test_default_model_size():
  # 3 scales, 32 channels (paper §4.1); 4 units, CCLB depth 3, 2 matching convs (our choice).
  assert _count(msnet.MSNET) == 358_403


def test_parameter_count_formula_and_config_deltas():
  c = TINY.channels
  base = _count(TINY)
  assert base == _expected_count(TINY)
  # Another unit: scales x depth CCLB convs, one dense 1x1 fuse from (units + 1) * c, and C
  # more inputs to the output fuse.
  more_units = dataclasses.replace(TINY, units=3)
  assert _count(more_units) - base == (TINY.scales * TINY.cclb_depth * _conv(c, c)
                                      + (3 * c * c + c) + c * c)
  # Another scale or CCLB layer: one C -> C 3x3 conv per affected CCLB.
  per_cclb_layer = _conv(c, c)
  assert _count(dataclasses.replace(TINY, scales=4)) - base == (
      TINY.units * TINY.cclb_depth * per_cclb_layer)
  assert _count(dataclasses.replace(TINY, cclb_depth=3)) - base == (
      TINY.units * TINY.scales * per_cclb_layer)
  assert _count(dataclasses.replace(TINY, feature_layers=3)) - base == _conv(c, c)


def test_max_pool_ceil_keeps_partial_windows():
  x = np.random.default_rng(0).normal(size=(2, 5, 7, 3)).astype(np.float32)
  got = np.asarray(msnet.max_pool_ceil(jnp.asarray(x), 4))
  assert got.shape == (2, 2, 2, 3)
  for i in range(2):
    for j in range(2):
      window = x[:, 4 * i:4 * i + 4, 4 * j:4 * j + 4]
      np.testing.assert_array_equal(got[:, i, j], window.max(axis=(1, 2)))


def test_upsample_crop_inverts_the_pool_grid():
  # Pooled cell j covers input pixels kj..kj+k-1, so its centre sits at input coordinate
  # kj + (k-1)/2. Bilinear upsampling reproduces a linear ramp exactly: pixel p reads
  # (p + 0.5)/k - 0.5 in cell units (clamped at the borders), by exactly k whatever the crop.
  k, h, w = 4, 9, 13
  ramp = jnp.broadcast_to(jnp.arange(3.0)[None, :, None, None], (1, 3, 4, 1))
  up = np.asarray(msnet.upsample_crop(ramp, k, h, w))
  assert up.shape == (1, h, w, 1)
  want = np.clip((np.arange(h) + 0.5) / k - 0.5, 0, 2)
  np.testing.assert_allclose(up[0, :, 5, 0], want, atol=1e-6)
  np.testing.assert_allclose(up[0, :, 0, 0], up[0, :, 12, 0])  # constant along columns


def test_each_unit_sees_all_scales(tiny):
  # Changing a CCLB of the coarsest scale changes the output: scale 3 is not dead code.
  model = nnx.clone(tiny)
  x = jax.random.uniform(jax.random.key(1), (2, 5, 7, 3))
  before = model(x)
  conv = model.units[0].blocks[-1].convs[0]
  conv.bias[...] = conv.bias[...] + 1.0
  assert float(jnp.max(jnp.abs(model(x) - before))) > 1e-4


def test_fresh_network_returns_its_input_unless_told_otherwise():
  x = jax.random.uniform(jax.random.key(4), (1, 9, 11, 3))
  fresh = msnet.MSNet(TINY, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(fresh(x), x)
  random_out = msnet.MSNet(dataclasses.replace(TINY, zero_init_output=False), rngs=nnx.Rngs(0))
  assert float(jnp.max(jnp.abs(random_out(x) - x))) > 1e-3
  # Only the initialisation differs: weights of either fit a model of the other.
  cfgs = [models.config_to_dict(dataclasses.replace(TINY, zero_init_output=z)) for z in (0, 1)]
  assert models.architecture(cfgs[0]) == models.architecture(cfgs[1])


def test_jit_matches_eager(tiny):
  x = jax.random.uniform(jax.random.key(2), (2, 5, 7, 3))
  np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(tiny, x), tiny(x), atol=1e-5)


def test_training_gradient_is_finite_reaches_every_parameter_and_survives_remat(tiny):
  keys = jax.random.split(jax.random.key(3), 3)
  syn, clean, real = (jax.random.uniform(k, (2, 5, 7, 3)) for k in keys)

  def loss(m):
    out, f_syn = m(syn, return_features=True)
    _, f_real = m(real, return_features=True)
    sup, _ = ml.supervised_loss(out, clean, {"ssim_weight": 1.0, "l1_weight": 1.0})
    return sup + ml.matching_loss(f_syn, f_real)[0]

  grads = nnx.state(nnx.jit(nnx.grad(loss))(tiny), nnx.Param)
  leaves = jax.tree.leaves(grads)
  assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
  assert all(float(jnp.max(jnp.abs(g))) > 0 for g in leaves)
  # Rematerialising each unit changes memory, not the gradient.
  remat = nnx.merge(nnx.graphdef(nnx.eval_shape(lambda: msnet.MSNet(
      dataclasses.replace(TINY, remat=True), rngs=nnx.Rngs(0)))), nnx.state(tiny))
  remat_grads = nnx.state(nnx.jit(nnx.grad(loss))(remat), nnx.Param)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads, remat_grads)


def test_config_validation_names_the_field(tiny):
  with pytest.raises(ValueError, match="model.units"):
    msnet.MSNetConfig(units=0)
  with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
    tiny(jnp.zeros((4, 4, 3)))


def test_registered_family_round_trips(tiny, tmp_path):
  d = models.config_to_dict(TINY)
  assert d["family"] == "msnet"
  assert models.config_from_dict(d) == TINY
  built = nnx.eval_shape(lambda: models.build(models.config_from_dict(d), nnx.Rngs(0)))
  assert isinstance(built, msnet.MSNet)
  with pytest.raises(ValueError, match="unknown msnet model config fields"):
    models.config_from_dict({**d, "stages": 6})
  # A saved MSNet comes back as an MSNet with the same outputs.
  model_files.save_model(tiny, tmp_path / "m.npz")
  loaded = model_files.load_model(tmp_path / "m.npz")
  x = jax.random.uniform(jax.random.key(5), (2, 5, 7, 3))
  assert isinstance(loaded, msnet.MSNet) and loaded.cfg == TINY
  np.testing.assert_array_equal(loaded(x), tiny(x))
