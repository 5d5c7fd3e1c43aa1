"""Input pipelines: grain over `tfds.data_source`, sharded per process, checkpointable.

Reads datasets built by `sapnet_jax.data.prepare` (or `demo.build_demo`). Training
(`make_train_iterator`): shuffle the patch table, repeat, crop, take this process's share,
batch; evaluation (`make_eval_iterator`): whole images, batch 1, in name order. Why so:
- Windows are cut (and flipped) before sharding, by NumPy seeded from their global position:
  batches depend on the seed only, not on process or worker count or where a run resumed.
- The patch table holds (record, top, left, mirrored) rows, not pixels: cheap to send to grain
  workers; batches cross the worker boundary as uint8 and become float at the end.
- Flips use NumPy, not dm-pix: they run in grain workers, where JAX is neither needed nor wanted.
- The iterator state is grain's: Orbax saves it beside the model (checkpoint.py), and a restored
  iterator yields exactly the batches the original would have yielded next.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Iterator

import grain
import numpy as np
import tensorflow_datasets as tfds

from sapnet_jax.utils import config_field
# synthetic_builder: imported for its TFDS builder's registration (builders registers the others).
from sapnet_jax.data import builders, prepare, synthetic_builder  # noqa: F401

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """A built dataset split: TFDS name (with config), split, and data_dir (None: TFDS's)."""

  name: str
  split: str
  data_dir: str | None = None


def parse_specs(text: str, data_dir: str | None = None, default_split: str = "test"
                ) -> list[DatasetSpec]:
  """"rain100h:test, synthetic_rain/shipped:validation" -> DatasetSpecs."""
  specs = []
  for item in text.split(","):
    item = item.strip()
    if item:
      name, _, split = item.partition(":")
      specs.append(DatasetSpec(name.strip(), split.strip() or default_split, data_dir))
  return specs


_field = functools.partial(config_field.field, where="config.data")


# ---- reading ------------------------------------------------------------------------------------
class Source:
  """A TFDS split opened lazily in each process (grain workers unpickle only the spec), with
  images left encoded so only the records a pipeline touches are decoded."""

  def __init__(self, spec: DatasetSpec):
    self.spec = spec
    self._source = None
    self._builder = None

  def __getstate__(self):
    return {"spec": self.spec}

  def __setstate__(self, state):
    self.__init__(state["spec"])

  @property
  def builder(self):
    if self._builder is None:
      b = prepare.builder(self.spec.name, self.spec.data_dir)
      if not b.is_prepared():
        raise ValueError(
            f"dataset {self.spec.name!r} is not built in {self.spec.data_dir or b.data_dir_root}"
            ": run python -m "
            f"sapnet_jax.data.prepare --dataset {self.spec.name} --manual_dir DIR"
            + (f" --data_dir {self.spec.data_dir}" if self.spec.data_dir else ""))
      if self.spec.split not in b.info.splits:
        raise ValueError(f"dataset {self.spec.name!r} has no split {self.spec.split!r} "
                         f"(it has {', '.join(sorted(b.info.splits))})")
      self._builder = b
    return self._builder

  @property
  def labelled(self) -> bool:
    return "clean" in self.builder.info.features

  def _open(self):
    if self._source is None:
      skip = {k: tfds.decode.SkipDecoding() for k in ("rainy", "clean")
              if k in self.builder.info.features}
      self._source = self.builder.as_data_source(self.spec.split, decoders=skip)
    return self._source

  def __len__(self) -> int:
    return self.builder.info.splits[self.spec.split].num_examples

  def sizes(self) -> np.ndarray:
    """(N, 2) int [height, width] per record, from the metadata the builder wrote (or, for a
    dataset built otherwise, from each record's `size`)."""
    sizes = (self.builder.info.metadata or {}).get("sizes", {}).get(self.spec.split)
    if sizes is None or len(sizes) != len(self):
      source = self._open()
      sizes = [source[i]["size"] for i in range(len(self))]
    return np.asarray(sizes, dtype=np.int64).reshape(-1, 2)

  def record(self, index: int) -> dict:
    """Record `index` with images decoded to uint8 RGB and the name as str."""
    raw = self._open()[int(index)]
    out = {"rainy": builders.decode_record_image(raw["rainy"]), "name": _text(raw["name"])}
    if "clean" in raw:
      out["clean"] = builders.decode_record_image(raw["clean"])
    return out


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# ---- patch plans --------------------------------------------------------------------------------
class PatchPlan:
  """The official patch list as a random-access sequence of (record, top, left, mirrored) rows:
  every `patch` window on the stride grid of every image (and of its mirror image with
  `mirror_copies`), record-major. Stores only per-record counts, so it stays small for
  hundreds of thousands of images and is cheap to send to grain workers."""

  def __init__(self, sizes: np.ndarray, patch: int, stride: int, mirror_copies: bool = False,
               name: str = "data"):
    sizes = np.asarray(sizes, np.int64).reshape(-1, 2)
    small = np.nonzero((sizes[:, 0] < patch) | (sizes[:, 1] < patch))[0]
    if small.size:
      h, w = sizes[small[0]]
      raise ValueError(f"{name}: record {small[0]} is {w}x{h}, smaller than "
                       f"data.patch_size={patch} ({small.size} record(s) are)")
    if len(sizes) == 0:
      raise ValueError(f"{name}: the split is empty")
    self.patch, self.stride, self.copies = patch, stride, 2 if mirror_copies else 1
    self.nx = (sizes[:, 1] - patch) // stride + 1
    counts = ((sizes[:, 0] - patch) // stride + 1) * self.nx
    self.offsets = np.concatenate([[0], np.cumsum(counts)])
    self.per_copy = int(self.offsets[-1])

  def __len__(self) -> int:
    return self.per_copy * self.copies

  def __getitem__(self, index: int) -> np.ndarray:
    if not 0 <= index < len(self):
      raise IndexError(index)
    mirrored, flat = divmod(int(index), self.per_copy)
    record = int(np.searchsorted(self.offsets, flat, side="right")) - 1
    row, col = divmod(flat - int(self.offsets[record]), int(self.nx[record]))
    return np.array([record, row * self.stride, col * self.stride, mirrored], np.int64)


class CropPair(grain.transforms.RandomMap):
  """Table row -> {"rainy", "clean"} uint8 windows cut at the same place of both images."""

  def __init__(self, source: Source, patch: int, random_position: bool, flip_lr: bool,
               flip_ud: bool, keys: tuple[str, ...] = ("rainy", "clean")):
    self.source, self.patch, self.random_position = source, patch, random_position
    self.flip_lr, self.flip_ud, self.keys = flip_lr, flip_ud, keys

  def random_map(self, element: np.ndarray, rng: np.random.Generator) -> Batch:
    index, top, left, mirrored = (int(v) for v in element)
    record = self.source.record(index)
    images = [record[k] for k in self.keys]
    h, w = images[0].shape[:2]
    p = self.patch
    if self.random_position:
      top, left = int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1))
    if mirrored:  # the official Rain100L copy: the window is cut from the mirrored image
      left = w - p - left
    out = {}
    for key, image in zip(self.keys, images):
      if image.shape[:2] != (h, w):
        raise ValueError(f"{self.source.spec.name}: record {index} ({record['name']}) has "
                         f"rainy and clean images of different sizes")
      out[key] = image[top:top + p, left:left + p]
    lr = bool(mirrored) != (self.flip_lr and rng.random() < 0.5)
    ud = self.flip_ud and rng.random() < 0.5
    for key in out:
      window = out[key]
      if lr:
        window = window[:, ::-1]
      if ud:
        window = window[::-1]
      out[key] = np.ascontiguousarray(window)
    return out


def _to_float(batch: Batch) -> Batch:
  # uint8 crosses the worker -> main process boundary; floats are made at the end (4x less IPC).
  return {k: (v.astype(np.float32) / 255.0 if v.dtype == np.uint8 else v)
          for k, v in batch.items()}


def _seeds(seed: int, n: int) -> list[int]:
  return [int(s) for s in np.random.SeedSequence(seed).generate_state(n)]


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # deferred: grain workers import this module and need no JAX
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  return process_index, process_count


def _patch_stream(source: Source, data_cfg, *, seed: int, batch: int, process_index: int,
                  process_count: int, random_position: bool, mirror_copies: bool,
                  keys: tuple[str, ...], epochs: int | None) -> grain.MapDataset:
  """shuffle -> repeat -> crop (seeded by the global position) -> this process's share -> batch."""
  patch, stride = int(data_cfg["patch_size"]), int(data_cfg["stride"])
  if patch < 1 or stride < 1:
    raise ValueError(f"data.patch_size ({patch}) and data.stride ({stride}) must be >= 1")
  plan = PatchPlan(source.sizes(), patch, stride, mirror_copies, name=source.spec.name)
  shuffle_seed, crop_seed = _seeds(seed, 2)
  ds = grain.MapDataset.source(plan)
  if _field(data_cfg, "shuffle", True):
    ds = ds.shuffle(seed=shuffle_seed)
  ds = ds.repeat(epochs)
  crop = CropPair(source, patch, random_position, bool(_field(data_cfg, "flip_lr", False)),
                  bool(_field(data_cfg, "flip_ud", False)), keys)
  # Cropping before sharding seeds each window by its global position: no two processes draw
  # the same random numbers, and the stream does not depend on the process count.
  ds = ds.random_map(crop, seed=crop_seed)
  ds = ds[process_index::process_count]
  return ds.batch(batch, drop_remainder=True)


def _merge_real(pair: tuple[Batch, Batch]) -> Batch:
  return {**pair[0], "real": pair[1]["rainy"]}


def per_process_batch(data_cfg, process_count: int) -> int:
  global_batch = int(data_cfg["global_batch_size"])
  if global_batch < 1 or global_batch % process_count:
    raise ValueError(f"data.global_batch_size={global_batch} must be a positive multiple of "
                     f"the process count {process_count}")
  return global_batch // process_count


def train_spec(data_cfg) -> DatasetSpec:
  return DatasetSpec(str(data_cfg["dataset"]), str(_field(data_cfg, "train_split", "train")),
                     _field(data_cfg, "data_dir", None))


def epoch_size(data_cfg) -> int:
  """Training patches per epoch over all processes (global steps per epoch = this // global
  batch), for epoch-based learning-rate milestones."""
  source = Source(train_spec(data_cfg))
  return len(PatchPlan(source.sizes(), int(data_cfg["patch_size"]), int(data_cfg["stride"]),
                       bool(_field(data_cfg, "mirror_copies", False)), name=source.spec.name))


def _flags_parsed() -> None:
  # grain reads its absl flags when it starts worker processes, and the spawned workers import
  # TFDS/grain afresh; outside an absl app (tests, notebooks) nobody parsed them: use defaults.
  from absl import flags  # pylint: disable=import-outside-toplevel
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _worker_init(worker_index: int, worker_count: int) -> None:
  del worker_index, worker_count
  _flags_parsed()


def _finish(ds: grain.MapDataset, data_cfg) -> grain.DatasetIterator:
  threads = int(_field(data_cfg, "read_threads", 2))
  prefetch = int(_field(data_cfg, "prefetch", 4))
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                               prefetch_buffer_size=prefetch))
  workers = int(_field(data_cfg, "worker_count", 0))
  if workers > 0:
    _flags_parsed()
    it_ds = it_ds.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=workers,
                                     per_worker_buffer_size=int(_field(data_cfg,
                                                                       "worker_buffer_size", 2))),
        worker_init_fn=_worker_init)
  return iter(it_ds.map(_to_float))


def make_train_iterator(data_cfg, *, seed: int, process_index: int | None = None,
                        process_count: int | None = None) -> grain.DatasetIterator:
  """The training stream of this process: dicts of float32 NumPy NHWC batches in [0, 1],
  "rainy" and "clean" (B, p, p, 3), plus "real" (B_real, p, p, 3) with data.real_dataset.

  B = data.global_batch_size / process count (assemble the global batch with
  jax.make_array_from_process_local_data); p = data.patch_size; B_real = data.real_batch_size
  or B. Endless unless data.num_epochs is set (then shares may end a batch apart: multi-host
  runs count steps). Checkpoint with `get_state`/`set_state` or grain.checkpoint.CheckpointSave
  and CheckpointRestore, rebuilding it first with the same config, seed and process count.
  With data.worker_count > 0 workers are spawned: the entry point needs a `__main__` guard.
  """
  process_index, process_count = _process(process_index, process_count)
  batch = per_process_batch(data_cfg, process_count)
  mode = str(_field(data_cfg, "patch_mode", "stride"))
  if mode not in ("stride", "random"):
    raise ValueError(f"data.patch_mode must be 'stride' or 'random', got {mode!r}")
  source = Source(train_spec(data_cfg))
  if not source.labelled:
    raise ValueError(f"data.dataset={source.spec.name!r} has no clean images; use it as "
                     "data.real_dataset")
  epochs = int(_field(data_cfg, "num_epochs", 0)) or None
  ds = _patch_stream(source, data_cfg, seed=seed, batch=batch, process_index=process_index,
                     process_count=process_count, random_position=mode == "random",
                     mirror_copies=bool(_field(data_cfg, "mirror_copies", False)),
                     keys=("rainy", "clean"), epochs=epochs)
  real_name = _field(data_cfg, "real_dataset", None)
  if real_name:
    real = Source(DatasetSpec(str(real_name), str(_field(data_cfg, "real_split", "train")),
                              _field(data_cfg, "data_dir", None)))
    real_batch = int(_field(data_cfg, "real_batch_size", 0)) or batch
    # Unlabelled photos: random windows, an endless stream cut to the labelled one's length.
    real_ds = _patch_stream(real, data_cfg, seed=_seeds(seed, 3)[2], batch=real_batch,
                            process_index=process_index, process_count=process_count,
                            random_position=True, mirror_copies=False, keys=("rainy",),
                            epochs=None)
    n = min(len(ds), len(real_ds))  # both endless unless data.num_epochs is set
    ds = grain.experimental.ZipMapDataset([ds[:n], real_ds[:n]]).map(_merge_real)
  logging.info("train data: %s, batch %d per process (%d of %d)", source.spec, batch,
               process_index, process_count)
  return _finish(ds, data_cfg)


class _WholeImage(grain.transforms.Map):

  def __init__(self, source: Source):
    self.source = source

  def map(self, index: int) -> Batch:
    record = self.source.record(index)
    out = {k: record[k][None] for k in ("rainy", "clean") if k in record}
    out["name"] = np.array([record["name"]])
    out["index"] = np.array([index], np.int64)
    return out


def make_eval_iterator(data: DatasetSpec | str, *, split: str | None = None,
                       data_dir: str | None = None, process_index: int | None = None,
                       process_count: int | None = None) -> Iterator[Batch]:
  """Whole images of one split, batch 1, in record (name) order; this process's share.

  `data` is a DatasetSpec or a "name[:split]" string (an entry of `config.eval.sets`). Items:
  {"rainy", "clean" (if labelled): float32 (1, H, W, 3), "name": str array (1,),
  "index": int64 (1,)}.
  """
  if isinstance(data, DatasetSpec):
    spec = data
  elif isinstance(data, str):
    spec = parse_specs(data, data_dir)[0]
  else:
    raise TypeError(f"make_eval_iterator: a DatasetSpec or a 'name[:split]' string, not "
                    f"{type(data).__name__}")
  if split is not None:
    spec = dataclasses.replace(spec, split=split)
  process_index, process_count = _process(process_index, process_count)
  source = Source(spec)
  ds = grain.MapDataset.range(len(source))[process_index::process_count]
  ds = ds.map(_WholeImage(source))
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=2))
              .map(_to_float))
