"""MSNet's losses: the semi-supervised matching loss and the supervised loss (Qiu et al. 2022).

Matching loss (paper §3.1). The matching network's features of a batch, (B, H, W, C), are
read as N = B·H·W feature vectors of dimension d = C, one per pixel, pooled over the whole
batch; synthetic (s) and real (r) batches are reduced separately:

    L_match = L_mean + L_covariance                                   (paper, first equation)
    L_mean  = ||M_s − M_r||                                           (paper, second equation)
    L_cov   = (1/d) ||(F_s − M_s)(F_s − M_s)^T − (F_r − M_r)(F_r − M_r)^T||_F    (third)

with M the mean vector and F the d x N matrix of feature vectors. The paper writes the norms
unsquared; that is the default here, and `squared=True` squares each term instead
(||ΔM||² + ||ΔΣ||²_F / d², the smooth form that CORAL-style losses use). The paper's
"(F − M)(F − M)^T" has no 1/(N − 1): taken literally it grows with the number of pixels per
batch (and differs between two batches of different size even for identical distributions),
so the default normalises it into the covariance, 1/(N − 1) as numpy.cov does;
`cov_norm="biased"` uses 1/N and `cov_norm="none"` the paper's literal scatter matrix.
The weight ω (paper §4.1: 1) is applied by the caller.

Supervised loss. The paper does not say which loss supervises the synthetic pairs; we use
ssim_weight·(−SSIM, `sapnet.ssim_loss`) + l1_weight·L1, both weights from the config
(docs/fidelity.md, MSNet).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from sapnet_jax.losses import sapnet

COV_NORMS = ("unbiased", "biased", "none")


def feature_vectors(feat: jax.Array) -> jax.Array:
  """(..., C) features as an (N, C) matrix of vectors, in float32 (float64 if given)."""
  if feat.ndim < 2:
    raise ValueError(f"features need a trailing channel axis, got shape {feat.shape}")
  dtype = jnp.promote_types(feat.dtype, jnp.float32)
  return feat.reshape(-1, feat.shape[-1]).astype(dtype)


def covariance(vectors: jax.Array, cov_norm: str = "unbiased") -> jax.Array:
  """(d, d) covariance of (N, d) vectors; "unbiased" equals numpy.cov(vectors, rowvar=False)."""
  if cov_norm not in COV_NORMS:
    raise ValueError(f"loss.matching_cov_norm must be one of {COV_NORMS}, got {cov_norm!r}")
  n = vectors.shape[0]
  if cov_norm == "unbiased" and n < 2:
    raise ValueError(f"an unbiased covariance needs at least 2 feature vectors, got {n}")
  # Centre first (two passes): E[xx^T] − mm^T cancels catastrophically for ReLU features
  # whose mean is large against their spread.
  centred = vectors - jnp.mean(vectors, axis=0)
  scatter = centred.T @ centred
  scale = {"unbiased": 1.0 / max(n - 1, 1), "biased": 1.0 / n, "none": 1.0}[cov_norm]
  return scatter * scale


def _norm(x: jax.Array) -> jax.Array:
  """Euclidean/Frobenius norm whose gradient at x = 0 is 0 rather than NaN."""
  sq = jnp.sum(x * x)
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def matching_loss(feat_syn: jax.Array, feat_real: jax.Array, *, squared: bool = False,
                  cov_norm: str = "unbiased") -> tuple[jax.Array, dict[str, jax.Array]]:
  """L_mean + L_cov between synthetic and real features (B, H, W, C); see the module doc.

  The two batches may differ in size but must have the same channel count. Returns
  (total, {"mean": L_mean, "cov": L_cov}), unweighted.
  """
  if feat_syn.shape[-1] != feat_real.shape[-1]:
    raise ValueError(f"synthetic and real features differ in channels: {feat_syn.shape} vs "
                     f"{feat_real.shape}")
  xs, xr = feature_vectors(feat_syn), feature_vectors(feat_real)
  d = xs.shape[-1]
  delta_mean = jnp.mean(xs, axis=0) - jnp.mean(xr, axis=0)
  delta_cov = covariance(xs, cov_norm) - covariance(xr, cov_norm)
  if squared:
    l_mean = jnp.sum(delta_mean * delta_mean)
    l_cov = jnp.sum(delta_cov * delta_cov) / d**2
  else:
    l_mean = _norm(delta_mean)
    l_cov = _norm(delta_cov) / d
  return l_mean + l_cov, {"mean": l_mean, "cov": l_cov}


def supervised_loss(derained: jax.Array, clean: jax.Array,
                    cfg: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
  """cfg.ssim_weight·(−SSIM) + cfg.l1_weight·L1 on the labelled (synthetic) pairs.

  The paper (Qiu et al. 2022) does not name its supervised loss; this pairing of the
  project's −SSIM loss with a pixel L1 is our choice (docs/fidelity.md, MSNet). Returns
  (total, {"ssim": −SSIM, "l1": L1}), the terms unweighted.
  """
  if derained.shape != clean.shape:
    raise ValueError(f"derained and clean images differ in shape: {derained.shape} vs "
                     f"{clean.shape}")
  neg_ssim = sapnet.ssim_loss(derained, clean)
  l1 = sapnet.l1(derained, clean)
  weight = {k: float(sapnet.field(cfg, k)) for k in ("ssim_weight", "l1_weight")}
  total = weight["ssim_weight"] * neg_ssim + weight["l1_weight"] * l1
  return total, {"ssim": neg_ssim, "l1": l1}
