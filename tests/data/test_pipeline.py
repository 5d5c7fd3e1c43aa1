"""The grain input pipelines on a tiny built dataset whose pixels say where they came from.

Rainy pixel (y, x) of record r is (40 r, y, x) and the clean image is 255 minus the rainy one,
so every crop tells which record and window it was cut from (its smallest green and blue
values are its top and left), whether rainy and clean were cut at the same place and flipped
together (clean == 1 - rainy everywhere), and whether it is a real window (consecutive rows and
columns).
"""

import numpy as np
import pytest
from PIL import Image

from configs import default
from sapnet_jax.data import pipeline, prepare

SIZES = [(120, 150), (130, 200), (100, 100), (181, 256)]  # 1 + 2 + 1 + 4 stride-80 windows


def _coded(record, h, w):
  y, x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  return np.stack([np.full((h, w), 40 * record), y, x], axis=-1).astype(np.uint8)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("pipeline")
  for split, sizes in (("train", SIZES), ("test", SIZES[:3])):
    for folder in ("rainy", "clean"):
      (root / "archive" / split / folder).mkdir(parents=True)
    for r, (h, w) in enumerate(sizes):
      rainy = _coded(r, h, w)
      Image.fromarray(rainy).save(root / "archive" / split / "rainy" / f"{r}.png")
      Image.fromarray(255 - rainy).save(root / "archive" / split / "clean" / f"{r}.png")
  prepare.build("paired_folder", str(root / "data"), str(root / "archive"))
  (root / "real").mkdir()
  for n in range(3):
    Image.fromarray(np.full((110, 120 + n, 3), 7 * n, np.uint8)).save(root / "real" / f"{n}.png")
  prepare.build("real_rain", str(root / "data"), str(root / "real"))
  return str(root / "data")


def _cfg(data_dir, **overrides):
  cfg = default.get_config().data
  cfg.update(dict(dataset="paired_folder", data_dir=data_dir, global_batch_size=2))
  cfg.update(overrides)
  return cfg


def _windows(batch):
  """(record, top, left, mirrored-or-flipped-lr) of every crop in a batch, checking that each
  is a real window and that rainy and clean line up."""
  rainy, clean = batch["rainy"], batch["clean"]
  np.testing.assert_allclose(clean, 1.0 - rainy, atol=1e-6)
  out = []
  for crop in np.round(rainy * 255).astype(int):
    r, g, b = crop[..., 0], crop[..., 1], crop[..., 2]
    assert np.all(r == r[0, 0])
    rows, cols = g[:, 0], b[0, :]
    assert np.all(g == rows[:, None]) and np.all(b == cols[None, :])
    assert np.all(np.abs(np.diff(rows)) == 1) and np.all(np.abs(np.diff(cols)) == 1)
    out.append((r[0, 0] // 40, rows.min(), cols.min(), int(cols[1] < cols[0])))
  return out


def _epoch(cfg, seed=0, **kw):
  return [w for batch in pipeline.make_train_iterator(cfg, seed=seed, **kw)
          for w in _windows(batch)]


def _official_windows(sizes, patch=100, stride=80):
  # PReNet's Im2Patch: img[:, i:endw - win + i + 1:stride, ...] for each window offset.
  return [(r, y, x) for r, (h, w) in enumerate(sizes)
          for y in range(0, h - patch + 1, stride) for x in range(0, w - patch + 1, stride)]


def test_patch_plan_is_the_official_grid():
  plan = pipeline.PatchPlan(np.array(SIZES), 100, 80, mirror_copies=True)
  rows = [tuple(plan[i]) for i in range(len(plan))]
  official = _official_windows(SIZES)
  assert rows == [w + (0,) for w in official] + [w + (1,) for w in official]
  with pytest.raises(IndexError):
    plan[len(plan)]
  with pytest.raises(ValueError, match="record 2 is 100x100, smaller than data.patch_size=120"):
    pipeline.PatchPlan(np.array(SIZES), 120, 80)


def test_stride_epoch_serves_every_official_window_once_in_random_order(data_dir):
  cfg = _cfg(data_dir, num_epochs=1, global_batch_size=1)
  seen = _epoch(cfg, process_index=0, process_count=1)
  official = _official_windows(SIZES)
  assert sorted(w[:3] for w in seen) == sorted(official)
  assert [w[:3] for w in seen] != official  # shuffled
  assert pipeline.epoch_size(cfg) == len(official) == 8


def test_mirror_copies_add_the_official_mirrored_windows(data_dir):
  cfg = _cfg(data_dir, num_epochs=1, global_batch_size=1, mirror_copies=True)
  seen = _epoch(cfg, process_index=0, process_count=1)
  # A window at `left` of the mirrored image shows columns w - 100 - left .. of the original.
  mirrored = sorted((r, y, SIZES[r][1] - 100 - x, 1) for r, y, x in _official_windows(SIZES))
  assert sorted(w for w in seen if w[3]) == mirrored
  assert sorted(w[:3] for w in seen if not w[3]) == sorted(_official_windows(SIZES))


def test_random_crops_with_flips_stay_aligned(data_dir):
  cfg = _cfg(data_dir, patch_mode="random", flip_lr=True, flip_ud=True, patch_size=64,
             global_batch_size=4)
  it = pipeline.make_train_iterator(cfg, seed=3)  # process index and count from jax: 0 of 1
  seen = [w for _ in range(10) for w in _windows(next(it))]  # asserts alignment per crop
  assert len({w[1:3] for w in seen}) > 20  # positions vary
  assert {w[3] for w in seen} == {0, 1}  # both flip states occur
  assert all(y + 64 <= SIZES[r][0] and x + 64 <= SIZES[r][1] for r, y, x, _ in seen)


def test_same_seed_same_batches_other_seed_other_batches(data_dir):
  cfg = _cfg(data_dir, patch_mode="random", flip_lr=True)

  def first(seed, n=4):
    it = pipeline.make_train_iterator(cfg, seed=seed, process_index=0, process_count=1)
    return [next(it) for _ in range(n)]
  a, b, c = first(1), first(1), first(2)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["rainy"], y["rainy"])
    np.testing.assert_array_equal(x["clean"], y["clean"])
  assert any(not np.array_equal(x["rainy"], z["rainy"]) for x, z in zip(a, c))


def test_restored_iterator_continues_exactly_through_orbax(data_dir, tmp_path):
  import grain
  import orbax.checkpoint as ocp
  cfg = _cfg(data_dir, patch_mode="random", flip_lr=True)
  it = pipeline.make_train_iterator(cfg, seed=0, process_index=0, process_count=1)
  for _ in range(5):  # past the end of the first epoch (4 batches of 2)
    next(it)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
  expected = [next(it) for _ in range(6)]
  fresh = pipeline.make_train_iterator(cfg, seed=0, process_index=0, process_count=1)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.restore(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
  for want in expected:
    got = next(fresh)
    np.testing.assert_array_equal(got["rainy"], want["rainy"])
    np.testing.assert_array_equal(got["clean"], want["clean"])
  # Plain get_state/set_state does the same.
  state = fresh.get_state()
  after = next(fresh)
  again = pipeline.make_train_iterator(cfg, seed=0, process_index=0, process_count=1)
  again.set_state(state)
  np.testing.assert_array_equal(next(again)["rainy"], after["rainy"])


@pytest.mark.parametrize("epochs", [1, 3])
def test_two_processes_get_disjoint_shares_that_cover_each_epoch(data_dir, epochs):
  cfg = _cfg(data_dir, num_epochs=epochs, global_batch_size=2)
  shares = [_epoch(cfg, process_index=p, process_count=2) for p in range(2)]
  official = _official_windows(SIZES)
  assert len(shares[0]) == len(shares[1]) == 4 * epochs
  for e in range(epochs):  # each process's epoch e is its items 4e .. 4e + 3
    first, second = ({w[:3] for w in s[4 * e:4 * e + 4]} for s in shares)
    assert not first & second
    assert first | second == set(official)
  # Processes see different windows in later epochs (a global shuffle, then the shares).
  if epochs > 1:
    assert {w[:3] for w in shares[0][:4]} != {w[:3] for w in shares[0][4:8]}


def test_per_process_batch_comes_from_the_global_batch(data_dir):
  cfg = _cfg(data_dir, global_batch_size=4)
  batch = next(pipeline.make_train_iterator(cfg, seed=0, process_index=1, process_count=2))
  assert batch["rainy"].shape == (2, 100, 100, 3) and batch["rainy"].dtype == np.float32
  with pytest.raises(ValueError, match="data.global_batch_size=4 must be a positive multiple"):
    pipeline.make_train_iterator(cfg, seed=0, process_index=0, process_count=3)


def test_semi_supervised_zips_an_unlabelled_stream(data_dir):
  cfg = _cfg(data_dir, real_dataset="real_rain", real_batch_size=3, patch_size=48)
  it = pipeline.make_train_iterator(cfg, seed=0, process_index=0, process_count=1)
  for _ in range(3):
    batch = next(it)
    assert batch["rainy"].shape == batch["clean"].shape == (2, 48, 48, 3)
    assert batch["real"].shape == (3, 48, 48, 3)
    # Real photos are flat grey 0, 7 or 14: every real crop is one of them.
    assert set(np.unique(np.round(batch["real"] * 255))) <= {0.0, 7.0, 14.0}
    _windows(batch)


def test_eval_iterator_gives_whole_images_in_name_order(data_dir):
  items = list(pipeline.make_eval_iterator("paired_folder:test", data_dir=data_dir,
                                           process_index=0, process_count=1))
  assert [str(ex["name"][0]) for ex in items] == ["0.png", "1.png", "2.png"]
  for r, ex in enumerate(items):
    h, w = SIZES[r]
    assert ex["rainy"].shape == ex["clean"].shape == (1, h, w, 3)
    np.testing.assert_array_equal(np.round(ex["rainy"][0] * 255), _coded(r, h, w))
  shares = [[int(ex["index"][0]) for ex in pipeline.make_eval_iterator(
      "paired_folder:test", data_dir=data_dir, process_index=p, process_count=2)]
      for p in range(2)]
  assert shares == [[0, 2], [1]]


def test_unbuilt_or_wrong_datasets_say_what_to_do(data_dir, tmp_path):
  with pytest.raises(ValueError, match="not built.*python -m sapnet_jax.data.prepare --dataset "
                                       "rain100h"):
    pipeline.make_train_iterator(_cfg(str(tmp_path), dataset="rain100h"), seed=0,
                                 process_index=0, process_count=1)
  with pytest.raises(ValueError, match="has no split 'validation'"):
    pipeline.make_eval_iterator("paired_folder:validation", data_dir=data_dir, process_index=0,
                                process_count=1)
  with pytest.raises(ValueError, match="data.patch_mode must be"):
    pipeline.make_train_iterator(_cfg(data_dir, patch_mode="grid"), seed=0, process_index=0,
                                 process_count=1)
  with pytest.raises(ValueError, match="no clean images"):
    pipeline.make_train_iterator(_cfg(data_dir, dataset="real_rain"), seed=0, process_index=0,
                                 process_count=1)


def test_worker_processes_give_the_same_batches_and_restore(data_dir):
  cfg = _cfg(data_dir, patch_mode="random", flip_lr=True)
  plain = pipeline.make_train_iterator(cfg, seed=4, process_index=0, process_count=1)
  cfg.worker_count = 1
  workers = pipeline.make_train_iterator(cfg, seed=4, process_index=0, process_count=1)
  try:
    for _ in range(3):
      np.testing.assert_array_equal(next(workers)["rainy"], next(plain)["rainy"])
    # The worker iterator's state restores too (what CheckpointSave/Restore store).
    state = workers.get_state()
    want = next(plain)["rainy"]
    np.testing.assert_array_equal(next(workers)["rainy"], want)
    workers.set_state(state)
    np.testing.assert_array_equal(next(workers)["rainy"], want)
  finally:
    workers.close()
