"""Gradient and Adam-step parity of training with the official PyTorch SAPNet.

Fixture: tests/fixtures/train_parity.npz, made by tests/fixtures/make_train_fixtures.py (dev
only, PyTorch): the official architecture with the official Rain100H weights, a fixed batch of
two 48x48 Rain100H crops, gradients of -SSIM and of the PCL term (VGG-16 from ../shared) w.r.t.
every parameter computed in float64, and the parameters after one torch Adam step (lr 1e-3).

We compute in float64 as well (model.dtype and the frozen VGG's dtype; parameters stay
float32): -SSIM subtracts nearly equal numbers, so float32 gradients of either framework differ
from the exact ones by up to ~1e-3 relative, which would say nothing about our code. In float64
the port's parity bound, 1e-4 relative (per tensor, max |a - b| / max |b|), holds with a wide
margin.
Both the reference kernel set and the CPU one (models/ops.py) are held to the same fixture.
"""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from support.paths import FIXTURES, shared_path
from sapnet_jax.losses import frozen_nets, sapnet
from sapnet_jax.models import pdu
from sapnet_jax.training import train_step
from sapnet_jax.weights import model_files, torch_layout
from configs import default

FIXTURE = FIXTURES / "train_parity.npz"


def _ours(fx, prefix: str) -> dict[str, np.ndarray]:
  """Fixture tensors under `prefix` (official keys and layout) in our parameter layout, through
  the converter (which rounds them to float32: 6e-8 relative, far below every tolerance)."""
  state_dict = {k[len(prefix):]: fx[k] for k in fx.files if k.startswith(prefix)}
  model = torch_layout.pdu_from_state_dict(state_dict, pdu.SAPNET)
  return model_files.flatten(model_files.params_dict(model))


@pytest.fixture(scope="module", params=["reference", "cpu"])
def setup(request):
  weights = shared_path("weights/sapnet_official/net_latest.pth")
  vgg = shared_path("weights/vgg16_imagenet/vgg16_features_hwio.npz")
  fx = np.load(FIXTURE)
  with jax.enable_x64(True):
    model = torch_layout.load_pth(weights, dtype="float64", impl=request.param)
    cfg = default.get_config().loss
    cfg.update(contrast="pcl", lpips_weight=0.0, seg_weight=0.0, vgg_weights=str(vgg),
               perceptual_dtype="float64")
    frozen = frozen_nets.build_frozen_nets(cfg)
    graphdef, params = nnx.split(model)
    params = nnx.to_pure_dict(params)
    rainy, clean = (jax.numpy.asarray(fx[k], jax.numpy.float64) for k in ("rainy", "clean"))

    def term(name):
      def f(p):
        out = nnx.merge(graphdef, p)(rainy)
        if name == "ssim":
          return sapnet.ssim_loss(out, clean)
        return sapnet.pcl(frozen.vgg, out, clean, rainy)
      return jax.value_and_grad(f)(params)

    results = {name: term(name) for name in ("ssim", "pcl")}
  return fx, params, results


@pytest.mark.parametrize("name", ["ssim", "pcl"])
def test_gradients_match_official(setup, name):
  fx, _, results = setup
  loss, grads = results[name]
  np.testing.assert_allclose(float(loss), float(fx[f"{name}_loss"]), rtol=1e-9)
  ours, ref = model_files.flatten(grads), _ours(fx, f"{name}_grad/")
  assert sorted(ours) == sorted(ref)
  for key, value in ref.items():
    # A tensor behind dead ReLUs has an all-zero gradient: then ours must be (nearly) zero too.
    rel = np.max(np.abs(np.asarray(ours[key]) - value)) / max(np.max(np.abs(value)), 1e-12)
    assert rel < 1e-4, f"{name} gradient of {key}: relative error {rel:.2e}"


def test_one_adam_step_matches_torch(setup):
  """Fed the fixture's own -SSIM gradients (float32, as torch got them): only Adam is compared."""
  fx, params, _ = setup
  grads = model_files.unflatten(_ours(fx, "ssim_grad/"))
  optim = default.get_config().optim
  tx = train_step.make_optimizer(optim, train_step.make_schedule(optim, steps_per_epoch=100))
  updates, _ = tx.update(grads, tx.init(params), params)
  new = model_files.flatten(optax.apply_updates(params, updates))
  ref = _ours(fx, "adam/")
  for key, value in ref.items():
    np.testing.assert_allclose(np.asarray(new[key]), value, atol=1e-6, rtol=0, err_msg=key)
