"""Whole-image and tiled inference."""

import numpy as np
import pytest
from flax import nnx

from support.paths import REPO
from sapnet_jax import infer, pretrained
from sapnet_jax.data.imageio import read_image
from sapnet_jax.models import pdu

# A network without global attention: every output pixel sees only its receptive field.
LOCAL = pdu.PDUConfig(attention="none", dilation=False, stages=1, num_blocks=1, channels=4)


@pytest.fixture(scope="module")
def local_derainer():
  return infer.Derainer(pdu.PDUNet(LOCAL, rngs=nnx.Rngs(0)))


@pytest.mark.parametrize("length,tile,overlap", [(10, 20, 4), (100, 40, 8), (97, 40, 24), (41, 40, 39)])
def test_tiles_cover_and_end_flush(length, tile, overlap):
  tile = min(tile, length)
  starts = infer.tile_starts(length, tile, overlap)
  covered = np.zeros(length, bool)
  for s in starts:
    covered[s:s + tile] = True
  assert covered.all() and starts[0] == 0 and starts[-1] == length - tile
  assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def test_blend_weights_partition_unity():
  length, tile, overlap = 232, 64, 16
  total = np.zeros(length)
  for s in infer.tile_starts(length, tile, overlap):
    w = infer.blend_ramp(s, tile, length, overlap)
    assert w.min() >= 0 and w.max() == 1
    total[s:s + tile] += w
  # Regular overlaps sum to exactly 1; the last, larger overlap is normalized by infer.
  np.testing.assert_allclose(total[: 3 * (tile - overlap)], 1.0, atol=1e-6)
  assert total.min() > 0


def test_tiles_equal_whole_image_for_local_networks(local_derainer):
  overlap = 4 * LOCAL.receptive_radius + 4
  image = np.random.default_rng(0).random((97, 83, 3), dtype=np.float32)
  whole = local_derainer(image, tile=None)
  tiled = local_derainer(image, tile=overlap + 20, overlap=overlap)
  np.testing.assert_allclose(tiled, whole, atol=1e-5)


def test_too_small_overlap_shows_seams(local_derainer):
  image = np.random.default_rng(0).random((97, 83, 3), dtype=np.float32)
  whole = local_derainer(image, tile=None)
  tiled = local_derainer(image, tile=30, overlap=2)
  assert np.abs(tiled - whole).max() > 1e-3


def test_sapnet_tiles_close_to_whole_image():
  # SAPNet's attention pools per tile, so tiles are close to, not equal to, the whole image.
  image = read_image(REPO / "examples" / "rain-064.jpg")[:200, :300]
  derainer = infer.Derainer(pretrained.load())
  whole = derainer(image, tile=None)
  tiled = derainer(image, tile=160, overlap=48)
  psnr = 10 * np.log10(1.0 / np.mean((tiled - whole) ** 2))
  assert psnr > 40, psnr


@pytest.mark.parametrize("shape", [(1, 1, 3), (2, 3, 3), (5, 300, 3)])
def test_any_size(local_derainer, shape):
  image = np.full(shape, 0.25, np.float32)
  out = local_derainer(image, tile=64, overlap=4 * LOCAL.receptive_radius + 4)
  assert out.shape == shape and np.isfinite(out).all()
  np.testing.assert_allclose(out, local_derainer(image, tile=None), atol=1e-5)


def test_bad_arguments(local_derainer):
  image = np.zeros((50, 50, 3), np.float32)
  with pytest.raises(ValueError, match="overlap"):
    local_derainer(image, tile=20, overlap=20)
  with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
    local_derainer(np.zeros((50, 50)), tile=None)


def test_progress_sees_every_tile_in_order(local_derainer):
  image = np.random.default_rng(0).random((97, 83, 3), dtype=np.float32)
  calls = []
  tiled = local_derainer(image, tile=40, overlap=8, progress=lambda *a: calls.append(a))
  total = len(infer.tile_starts(97, 40, 8)) * len(infer.tile_starts(83, 40, 8))
  assert total == 9 and calls == [(k, total) for k in range(total + 1)]
  np.testing.assert_array_equal(tiled, local_derainer(image, tile=40, overlap=8))
  calls.clear()
  local_derainer(image, tile=None, progress=lambda *a: calls.append(a))
  assert calls == [(0, 1), (1, 1)]  # a whole image is one tile


@pytest.mark.parametrize("shape", [(1, 1), (97, 83), (511, 512), (513, 700), (750, 1000),
                                   (1000, 1333), (1500, 2000), (3000, 4000), (1, 4000),
                                   (3000, 7)])
def test_balanced_tiles_bound_rows_and_area_and_compute_no_more_than_before(shape):
  h, w = shape
  tile, overlap = 512, 64
  th, tw = infer.balanced_tiles(h, w, tile, overlap)
  assert th <= min(h, tile) and tw <= w and th * tw <= tile * tile
  count = 0
  for length, side in ((h, th), (w, tw)):
    starts = infer.tile_starts(length, side, overlap)
    assert starts[0] == 0 and starts[-1] + side == length  # covered
    assert all(b - a <= side - overlap for a, b in zip(starts, starts[1:]))  # overlaps kept
    count = max(count, 1) * len(starts)
  # Tiles of at most `tile` a side, shared evenly (the rule before), are one of the candidates.
  before = 1
  for n in (h, w):
    k = len(infer.tile_starts(n, min(tile, n), overlap))
    before *= k * infer._shared(n, k, overlap)
  assert count * th * tw <= before
