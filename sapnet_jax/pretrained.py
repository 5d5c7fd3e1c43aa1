"""Ready-to-use models from a registered name, a PyTorch `.pth`, or a saved checkpoint.

    model = sapnet_jax.pretrained.load("sapnet-rain100h")      # shipped, no download
    model = sapnet_jax.pretrained.load("prenet-rain100h")      # fetched once, SHA-256 checked
    model = sapnet_jax.pretrained.load("path/to/net_latest.pth")  # architecture from its keys
    model = sapnet_jax.pretrained.load("path/to/orbax_dir")     # converter or training output
    model = sapnet_jax.pretrained.load("gs://bucket/w.npz")     # any path may be a URI

Shipped: the official SAPNet weights trained on Rain100H, converted (MIT licence, copyright
ShenZheng2000; see weights/LICENSE-SAPNet.txt). The official PReNet repository has no licence,
so its weights are not shipped; their names download the official files from that repository.

`python -m sapnet_jax.pretrained [--json]` lists the names with their source, licence and
whether each is shipped, cached (hash checked) or not downloaded yet; it downloads nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from sapnet_jax.weights import registry
# The documented API, owned by weights.registry.
from sapnet_jax.weights.registry import (DEFAULT, REGISTRY, WEIGHTS_HELP, UnknownWeightsError,
                                         display_name, listing, load, resolve)

__all__ = ["DEFAULT", "REGISTRY", "WEIGHTS_HELP", "UnknownWeightsError", "display_name",
           "listing", "load", "resolve", "main"]


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m sapnet_jax.pretrained",
      description="Lists the registered weights names (for --weights NAME): what each is, "
      "where it comes from, its licence, and whether it is shipped, cached or not downloaded "
      "yet. Downloads nothing; the cache is $SAPNET_JAX_CACHE, else ~/.cache/sapnet_jax.")
  parser.add_argument("--json", action="store_true", help="print the listing as JSON")
  args = parser.parse_args(argv)
  rows = registry.listing()
  if args.json:
    print(json.dumps(rows, indent=1))
    return 0
  for row in rows:
    entry = registry.REGISTRY[row["name"]]
    source = (f"shipped in the package, converted from {entry.source}" if row["shipped"]
              else f"downloaded from {entry.url}")
    print(f"{row['name']}{'  (default)' if row['default'] else ''}\n"
          f"  {row['description']}\n  source:  {source}\n  licence: {row['licence']}\n"
          f"  state:   {registry.State(row['state'], row['path']).describe()}\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
