"""Build a dataset once: python -m sapnet_jax.data.prepare --dataset NAME --manual_dir DIR
[--data_dir DIR] [--overwrite].

NAME is a builder of sapnet_jax.data.builders (rain100h, rain100l, rain12, rain1400, rain800,
spa_data, real_rain, paired_folder) or the demo dataset (synthetic_rain/shipped and
synthetic_rain/shipped_rain100h, which need no --manual_dir, or synthetic_rain/pool and
synthetic_rain/pool_rain100h). The result is an ArrayRecord dataset under
DATA_DIR/NAME/VERSION (DATA_DIR defaults to TFDS's ~/tensorflow_datasets).

Idempotent and safe to interrupt: TFDS writes into DATA_DIR/NAME/incomplete.* and renames the
folder only when every split is written, so a second call reuses a finished dataset and never
a half-written one. It does not notice a changed MANUAL_DIR: pass --overwrite to rebuild.

DATA_DIR and MANUAL_DIR may be buckets (gs://...). ArrayRecord's reader and writer open local
files only (`open() failed ... gs://` when TFDS writes there), so a dataset in a bucket is
built in the local mirror of DATA_DIR (sapnet_jax.utils.fileio.mirror_path) and uploaded, its
dataset_info.json last: a dataset counts as built in the bucket once that file is there.
Every process that reads it downloads it once into the same local mirror.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Sequence

import tensorflow_datasets as tfds

from sapnet_jax.data import builders, imageio, synthetic_builder
from sapnet_jax.data.pairs import LayoutError
from sapnet_jax.utils import fileio

_DEMO_CONFIGS = {f"synthetic_rain/{c.name}": c
                 for c in synthetic_builder.SyntheticRain.BUILDER_CONFIGS}
DEMO_NAMES = list(_DEMO_CONFIGS)
NO_MANUAL_DIR = ("synthetic_rain",) + tuple(n for n, c in _DEMO_CONFIGS.items() if not c.pool)


def known_datasets() -> list[str]:
  return sorted(builders.BUILDERS) + DEMO_NAMES


def _check_name(name: str) -> None:
  if name.split("/")[0] not in builders.BUILDERS and not name.startswith("synthetic_rain"):
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(known_datasets())}")


_BUILT_MARKER = "dataset_info.json"  # TFDS writes it into every finished dataset folder


def builder(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """The TFDS builder for `name` (a registered sapnet_jax builder, optionally `name/config`).

  With a bucket as `data_dir` the builder works in the local mirror of it, into which a
  dataset built in the bucket is downloaded first.
  """
  _check_name(name)
  if not data_dir:
    return tfds.builder(name)
  if not fileio.is_remote(data_dir):
    return tfds.builder(name, data_dir=os.path.expanduser(data_dir))
  b = tfds.builder(name, data_dir=fileio.mirror_path(data_dir))
  if not b.is_prepared() and is_built(b, data_dir):
    fileio.local_copy(remote_path(b, data_dir))  # lands at b.data_path
    b = tfds.builder(name, data_dir=fileio.mirror_path(data_dir))
  return b


def is_built(b: tfds.core.DatasetBuilder, data_dir: str | None) -> bool:
  """Whether the dataset is complete in `data_dir` (for a bucket: uploaded whole)."""
  if data_dir and fileio.is_remote(data_dir):
    return fileio.exists(fileio.join(remote_path(b, data_dir), _BUILT_MARKER))
  return b.is_prepared()


def remote_path(b: tfds.core.DatasetBuilder, data_dir: str) -> str:
  """The bucket folder of the dataset whose local mirror `b` reads."""
  rel = os.path.relpath(os.fspath(b.data_path), fileio.mirror_path(data_dir))
  return fileio.join(data_dir, *rel.split(os.sep))


def stale_builds(b: tfds.core.DatasetBuilder) -> list[str]:
  """Folders left by interrupted builds of this dataset (TFDS never reuses them)."""
  parent = os.path.dirname(os.fspath(b.data_path))
  if not os.path.isdir(parent):
    return []
  return sorted(os.path.join(parent, d) for d in os.listdir(parent)
                if d.startswith("incomplete.") and d.endswith(str(b.version)))


def build(name: str, data_dir: str | None = None, manual_dir: str | None = None,
          overwrite: bool = False) -> tfds.core.DatasetBuilder:
  """Builds `name` unless it is already built in `data_dir`; returns its builder.

  Raises LayoutError / ImageReadError naming the folder or file at fault.
  """
  b = builder(name, data_dir)
  remote = bool(data_dir) and fileio.is_remote(data_dir)
  if is_built(b, data_dir) and not overwrite:
    logging.info("%s: reusing %s", name, remote_path(b, data_dir) if remote else b.data_dir)
    return b
  if manual_dir is None and name not in NO_MANUAL_DIR:
    raise ValueError(f"{name}: --manual_dir is required (the folder holding the unpacked "
                     f"archive).\n{type(b).MANUAL_DOWNLOAD_INSTRUCTIONS}")
  if manual_dir is not None and not fileio.is_dir(manual_dir):
    raise LayoutError(f"{name}: manual_dir {manual_dir} is not a folder.\n"
                      f"{type(b).MANUAL_DOWNLOAD_INSTRUCTIONS}")
  if manual_dir is not None:
    manual_dir = os.path.abspath(fileio.local_copy(manual_dir))  # builders walk it with os calls
  mode = (tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if overwrite
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  config = tfds.download.DownloadConfig(manual_dir=manual_dir, download_mode=mode,
                                        try_download_gcs=False)
  if overwrite or not b.is_prepared():  # a local mirror may be built but not yet uploaded
    b.download_and_prepare(download_config=config, file_format="array_record")
  if remote:
    fileio.upload_tree(b.data_path, remote_path(b, data_dir), last=(_BUILT_MARKER,))
  return b


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      epilog="Builders and the folder layouts they accept: pydoc sapnet_jax.data.builders")
  parser.add_argument("--dataset", required=True, help=", ".join(known_datasets()))
  parser.add_argument("--manual_dir", default=None, help="the unpacked archive")
  parser.add_argument("--data_dir", default=None,
                      help="where built datasets live (default: ~/tensorflow_datasets)")
  parser.add_argument("--overwrite", action="store_true", help="rebuild even if already built")
  args = parser.parse_args(argv)
  tfds.display_progress_bar(True)
  start = time.perf_counter()
  try:
    b = builder(args.dataset, args.data_dir)
    reused = is_built(b, args.data_dir) and not args.overwrite
    b = build(args.dataset, args.data_dir, args.manual_dir, args.overwrite)
  except (ValueError, imageio.ImageReadError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  splits = ", ".join(f"{s}: {v.num_examples}" for s, v in sorted(b.info.splits.items()))
  verb = "reused" if reused else f"built in {time.perf_counter() - start:.1f} s"
  where = (remote_path(b, args.data_dir) if args.data_dir and fileio.is_remote(args.data_dir)
           else b.data_dir)
  print(f"{args.dataset}: {verb} at {where} ({splits})")
  for path in stale_builds(b):
    print(f"note: {path} is left from an interrupted build and is never read; delete it to "
          "free the space", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
