"""The PDU network family: shapes, parameter counts, weight sharing, loop vs scan."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sapnet_jax import models
from sapnet_jax.models import pdu

TINY = pdu.PDUConfig(channels=8, reduction=4, stages=3)


@pytest.mark.parametrize("name,expected", [("sapnet", 180_483), ("prenet", 168_963), ("prn", 95_107)])
def test_parameter_counts_match_official(name, expected):
  model = nnx.eval_shape(lambda: pdu.PDUNet(pdu.PRESETS[name], rngs=nnx.Rngs(0)))
  assert models.count_params(model) == expected


def test_stages_share_weights():
  # Parameter count does not grow with the number of stages, and changing a stage count on
  # the same weights changes only how many times they are applied.
  counts = {s: models.count_params(nnx.eval_shape(
      lambda s=s: pdu.PDUNet(dataclasses.replace(TINY, stages=s), rngs=nnx.Rngs(0))))
            for s in (1, 2, 6)}
  assert len(set(counts.values())) == 1
  model = pdu.PDUNet(TINY, rngs=nnx.Rngs(0))
  x = jax.random.uniform(jax.random.key(1), (1, 12, 10, 3))
  _, stages = model(x, return_stages=True)
  two = pdu.PDUNet(dataclasses.replace(TINY, stages=2), rngs=nnx.Rngs(0))  # same init key
  _, stages2 = two(x, return_stages=True)
  np.testing.assert_allclose(stages[:2], stages2, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 1, 1, 3), (2, 7, 13, 3), (1, 33, 20, 3)])
@pytest.mark.parametrize("name", ["sapnet", "prenet", "prn"])
def test_output_shapes(name, shape):
  cfg = dataclasses.replace(pdu.PRESETS[name], channels=8, reduction=4, stages=2)
  model = pdu.PDUNet(cfg, rngs=nnx.Rngs(0))
  x = jnp.full(shape, 0.5)
  y, stages = model(x, return_stages=True)
  assert y.shape == shape and y.dtype == jnp.float32
  assert stages.shape == (2,) + shape
  np.testing.assert_array_equal(stages[-1], y)
  assert model(x).shape == shape


@pytest.mark.parametrize("attention", pdu.ATTENTIONS)
def test_loop_and_scan_agree(attention):
  cfg = dataclasses.replace(TINY, attention=attention)
  loop = pdu.PDUNet(cfg, rngs=nnx.Rngs(3))
  scan = pdu.PDUNet(dataclasses.replace(cfg, scan=True), rngs=nnx.Rngs(3))
  x = jax.random.uniform(jax.random.key(0), (2, 17, 11, 3))
  y1, s1 = loop(x, return_stages=True)
  y2, s2 = scan(x, return_stages=True)
  np.testing.assert_allclose(y1, y2, atol=1e-5)
  np.testing.assert_allclose(s1, s2, atol=1e-5)


def test_attention_variants_differ_in_parameters():
  # cra has the 1x1 residual branch, ca has biases, se neither; none has no attention.
  counts = {a: models.count_params(nnx.eval_shape(
      lambda a=a: pdu.PDUNet(dataclasses.replace(pdu.SAPNET, attention=a), rngs=nnx.Rngs(0))))
            for a in pdu.ATTENTIONS}
  c, hidden = 32, 2
  per_layer = {"se": 2 * c * hidden, "ca": 2 * c * hidden + hidden + c,
               "cra": 2 * c * hidden + c * c, "none": 0}
  for a in pdu.ATTENTIONS:
    assert counts[a] - counts["none"] == 10 * per_layer[a]


def test_receptive_radius_is_exact_for_local_networks():
  # Without global attention, an input pixel influences outputs up to the radius away and none
  # beyond it: this is what makes tiled inference exact (see infer.py).
  cfg = pdu.PDUConfig(attention="none", dilation=True, channels=4, stages=2, num_blocks=2)
  r = cfg.receptive_radius
  model = pdu.PDUNet(cfg, rngs=nnx.Rngs(0))
  size = 2 * r + 9
  c = size // 2
  x = jax.random.uniform(jax.random.key(0), (1, size, size, 3))
  changed = np.abs(np.asarray(model(x.at[0, c, c].add(0.5)) - model(x))).max(axis=(0, 3)) > 0
  rows, cols = np.nonzero(changed)
  assert max(np.abs(rows - c).max(), np.abs(cols - c).max()) == r


def test_bfloat16_compute_stays_close():
  model32 = pdu.PDUNet(TINY, rngs=nnx.Rngs(0))
  model16 = pdu.PDUNet(dataclasses.replace(TINY, dtype="bfloat16"), rngs=nnx.Rngs(0))
  x = jax.random.uniform(jax.random.key(0), (1, 16, 16, 3))
  y16 = model16(x)
  assert y16.dtype == jnp.float32
  assert np.abs(np.asarray(y16) - np.asarray(model32(x))).max() < 0.05


@pytest.mark.parametrize("field,value", [("attention", "cbam"), ("stages", 0), ("channels", 0),
                                         ("dtype", "float16"), ("reduction", 64)])
def test_bad_config_is_named(field, value):
  with pytest.raises(ValueError, match=f"model.{field}" if field != "reduction" else "reduction"):
    pdu.PDUConfig(**{field: value})


def test_bad_input_shape():
  model = pdu.PDUNet(TINY, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
    model(jnp.zeros((8, 8, 3)))


@pytest.mark.parametrize("scan", [False, True])
def test_remat_gives_the_same_gradients(scan):
  x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3))
  grads = []
  for remat in (False, True):
    model = pdu.PDUNet(dataclasses.replace(TINY, scan=scan, remat=remat), rngs=nnx.Rngs(0))
    grads.append(jax.tree.leaves(nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)))
  assert max(float(jnp.abs(a - b).max()) for a, b in zip(*grads)) <= 1e-6
  assert max(float(jnp.abs(a).max()) for a in grads[0]) > 0


def test_bfloat16_compute_gives_float32_gradients_close_to_float32_ones():
  # The custom VJPs (bias, attention scaling, boundaries) must hand back cotangents in the
  # dtype of what they differentiate, and bfloat16 compute must still train.
  x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3))
  grads = {}
  for dtype in ("float32", "bfloat16"):
    model = pdu.PDUNet(dataclasses.replace(TINY, dtype=dtype), rngs=nnx.Rngs(0))
    grads[dtype] = jax.tree.leaves(nnx.grad(lambda m: jnp.mean((m(x) - 0.5) ** 2))(model))
  for a, b in zip(grads["float32"], grads["bfloat16"]):
    assert b.dtype == jnp.float32
    assert float(jnp.abs(a - b).max()) <= 0.1 * float(jnp.abs(a).max()) + 1e-6
