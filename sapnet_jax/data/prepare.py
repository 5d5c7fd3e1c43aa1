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
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Sequence

import tensorflow_datasets as tfds

from sapnet_jax.data import builders, demo, imageio
from sapnet_jax.data.pairs import LayoutError

_DEMO_CONFIGS = {f"synthetic_rain/{c.name}": c for c in demo.SyntheticRain.BUILDER_CONFIGS}
DEMO_NAMES = list(_DEMO_CONFIGS)
NO_MANUAL_DIR = ("synthetic_rain",) + tuple(n for n, c in _DEMO_CONFIGS.items() if not c.pool)


def known_datasets() -> list[str]:
  return sorted(builders.BUILDERS) + DEMO_NAMES


def _check_name(name: str) -> None:
  if name.split("/")[0] not in builders.BUILDERS and not name.startswith("synthetic_rain"):
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(known_datasets())}")


def builder(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """The TFDS builder for `name` (a registered sapnet_jax builder, optionally `name/config`)."""
  _check_name(name)
  return tfds.builder(name, data_dir=os.path.expanduser(data_dir) if data_dir else None)


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
  if b.is_prepared() and not overwrite:
    logging.info("%s: reusing %s", name, b.data_dir)
    return b
  if manual_dir is None and name not in NO_MANUAL_DIR:
    raise ValueError(f"{name}: --manual_dir is required (the folder holding the unpacked "
                     f"archive).\n{type(b).MANUAL_DOWNLOAD_INSTRUCTIONS}")
  if manual_dir is not None and not os.path.isdir(manual_dir):
    raise LayoutError(f"{name}: manual_dir {manual_dir} is not a folder.\n"
                      f"{type(b).MANUAL_DOWNLOAD_INSTRUCTIONS}")
  mode = (tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if overwrite
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  config = tfds.download.DownloadConfig(
      manual_dir=os.path.abspath(manual_dir) if manual_dir else None, download_mode=mode,
      try_download_gcs=False)
  b.download_and_prepare(download_config=config, file_format="array_record")
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
    reused = b.is_prepared() and not args.overwrite
    b = build(args.dataset, args.data_dir, args.manual_dir, args.overwrite)
  except (ValueError, imageio.ImageReadError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  splits = ", ".join(f"{s}: {v.num_examples}" for s, v in sorted(b.info.splits.items()))
  verb = "reused" if reused else f"built in {time.perf_counter() - start:.1f} s"
  print(f"{args.dataset}: {verb} at {b.data_dir} ({splits})")
  for path in stale_builds(b):
    print(f"note: {path} is left from an interrupted build and is never read; delete it to "
          "free the space", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
