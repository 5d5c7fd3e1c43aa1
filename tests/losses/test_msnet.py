"""MSNet's losses (Qiu et al. 2022): the feature-matching loss against NumPy's statistics and the
paper's formula, and the supervised SSIM + L1 loss weighted by the config."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import ndimage

from sapnet_jax.losses import msnet as ml, sapnet


# --- matching loss --------------------------------------------------------------------------

def _features(seed, shape=(2, 5, 6, 4), shift=0.0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape) + shift, jnp.float32)


@pytest.mark.parametrize("cov_norm,bias", [("unbiased", False), ("biased", True)])
def test_covariance_equals_numpy_cov(cov_norm, bias):
  x = np.random.default_rng(0).normal(size=(300, 6)) * np.arange(1, 7) + 3.0
  got = ml.covariance(jnp.asarray(x, jnp.float32), cov_norm)
  # float32 sums of 300 products of magnitude ~40: relative error well under 1e-5.
  np.testing.assert_allclose(got, np.cov(x, rowvar=False, bias=bias), rtol=1e-5, atol=1e-5)
  scatter = ml.covariance(jnp.asarray(x, jnp.float32), "none")
  np.testing.assert_allclose(scatter, np.cov(x, rowvar=False) * 299, rtol=1e-5, atol=1e-3)


def test_matching_loss_is_the_paper_formula():
  a, b = _features(0), _features(1, (3, 4, 4, 4), shift=0.5)
  va, vb = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
  d_mean = va.mean(0) - vb.mean(0)
  d_cov = np.cov(va, rowvar=False) - np.cov(vb, rowvar=False)
  total, terms = ml.matching_loss(a, b)
  np.testing.assert_allclose(terms["mean"], np.linalg.norm(d_mean), rtol=1e-5)
  np.testing.assert_allclose(terms["cov"], np.linalg.norm(d_cov, "fro") / 4, rtol=1e-5)
  np.testing.assert_allclose(total, terms["mean"] + terms["cov"], rtol=1e-6)
  _, sq = ml.matching_loss(a, b, squared=True)
  np.testing.assert_allclose(sq["mean"], np.sum(d_mean**2), rtol=1e-5)
  np.testing.assert_allclose(sq["cov"], np.sum(d_cov**2) / 16, rtol=1e-5)


@pytest.mark.parametrize("squared", [False, True])
def test_matching_loss_zero_for_identical_positive_and_differentiable_otherwise(squared):
  a, b = _features(0), _features(1, shift=0.3)
  fn = lambda x, y: ml.matching_loss(x, y, squared=squared)[0]
  assert float(fn(a, a)) == 0.0
  g_same = jax.grad(fn)(a, a)
  assert np.isfinite(np.asarray(g_same)).all()  # no NaN from the norm's kink at 0
  assert float(fn(a, b)) > 0
  g = jax.grad(fn)(a, b)
  assert np.isfinite(np.asarray(g)).all() and float(jnp.max(jnp.abs(g))) > 0


def test_matching_loss_ignores_the_order_of_vectors():
  # Statistics over the set of vectors: shuffling pixels and images changes nothing.
  a, b = _features(0, (2, 5, 6, 4)), _features(1, (3, 3, 3, 4), shift=0.2)
  perm = np.random.default_rng(2).permutation(60)
  shuffled = a.reshape(60, 4)[perm].reshape(3, 4, 5, 4)
  np.testing.assert_allclose(ml.matching_loss(shuffled, b)[0], ml.matching_loss(a, b)[0],
                             rtol=1e-5)
  np.testing.assert_allclose(ml.matching_loss(b, a)[0], ml.matching_loss(a, b)[0], rtol=1e-6)


def test_matching_loss_rejects_mismatched_channels_and_unknown_norm():
  with pytest.raises(ValueError, match="channels"):
    ml.matching_loss(_features(0, (1, 2, 2, 4)), _features(0, (1, 2, 2, 5)))
  with pytest.raises(ValueError, match="loss.matching_cov_norm"):
    ml.matching_loss(_features(0), _features(1), cov_norm="n-1")


# --- supervised loss ------------------------------------------------------------------------

def _ssim_reference(x, y):
  """Numpy/scipy SSIM with an 11x11 sigma-1.5 Gaussian and zero ("constant") borders."""
  g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
  w = np.outer(g, g) / g.sum() ** 2
  blur = lambda a: np.stack([ndimage.correlate(a[..., c], w, mode="constant")
                             for c in range(a.shape[-1])], -1)
  vals = []
  for xi, yi in zip(x, y):
    mx, my = blur(xi), blur(yi)
    vx, vy, cxy = blur(xi * xi) - mx**2, blur(yi * yi) - my**2, blur(xi * yi) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    vals.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
  return np.mean(vals)


def test_ssim_matches_scipy_reference():
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(2, 16, 13, 3))
  y = np.clip(x + rng.normal(scale=0.1, size=x.shape), 0, 1)
  # float32 window sums against float64: agreement to 1e-5 on values of order 1.
  np.testing.assert_allclose(sapnet.ssim(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)),
                             _ssim_reference(x, y), atol=1e-5)
  np.testing.assert_allclose(sapnet.ssim(jnp.asarray(x), jnp.asarray(x)), 1.0, atol=1e-6)


def test_supervised_loss_weights_come_from_the_config():
  rng = np.random.default_rng(1)
  out, clean = (jnp.asarray(rng.uniform(size=(2, 12, 12, 3)), jnp.float32) for _ in range(2))
  cfg = ml_collections.ConfigDict(dict(ssim_weight=2.0, l1_weight=0.5))
  total, terms = ml.supervised_loss(out, clean, cfg)
  np.testing.assert_allclose(terms["ssim"], -sapnet.ssim(out, clean), rtol=1e-6)
  np.testing.assert_allclose(terms["l1"], np.mean(np.abs(np.asarray(out) - np.asarray(clean))),
                             rtol=1e-5)
  np.testing.assert_allclose(total, 2.0 * terms["ssim"] + 0.5 * terms["l1"], rtol=1e-6)
  same, _ = ml.supervised_loss(clean, clean, {"ssim_weight": 1.0, "l1_weight": 1.0})
  np.testing.assert_allclose(same, -1.0, atol=1e-6)
  with pytest.raises(ValueError, match="loss.l1_weight"):
    ml.supervised_loss(out, clean, {"ssim_weight": 1.0})
