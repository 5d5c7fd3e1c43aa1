"""Converts PyTorch checkpoints into sapnet_jax weights, without PyTorch.

De-raining networks (official SAPNet, PReNet, PRN) become a model checkpoint:

    python -m sapnet_jax.convert SRC.pth [--arch sapnet|prenet|prn] --out DIR|FILE.npz

The frozen networks of the losses (torchvision VGG-16 / AlexNet / ResNet-101, timm ResNet-101,
the LPIPS v0.1 linear layers) become a flat .npz in sapnet_jax's layout (`conv1_1/kernel`,
HWIO), which `config.loss.*_weights` can name; those fields also accept the original files:

    python -m sapnet_jax.convert resnet101-63fe2227.pth --arch resnet101 --out resnet101.npz
    python -m sapnet_jax.convert --download vgg16 --out vgg16.npz   # fetched, SHA-256 checked

Every tensor of the source must be used and every shape must match; otherwise the error names
the key. `sapnet_jax.weights.pth` reads .pth/.bin and .safetensors files. SRC and --out may be URIs
(gs://bucket/...).
"""

from __future__ import annotations

import sys

import numpy as np

from sapnet_jax import models
from sapnet_jax.models import pdu
from sapnet_jax.utils import flags
from sapnet_jax.weights import backbones, model_files, torch_layout
from sapnet_jax.weights.pth import PthError


# --- Frozen networks of the losses -------------------------------------------------------


def _save_flat(arrays: dict[str, np.ndarray], out: str) -> None:
  if not out.endswith(".npz"):
    raise torch_layout.ConversionError(f"--out {out}: backbone weights are written as a FILE.npz")
  model_files.write_npz(out, arrays)  # with the digest that read_weights verifies


def main(argv: list[str] | None = None) -> int:
  parser = flags.command_parser("sapnet_jax.convert", __doc__)
  parser.add_argument("src", nargs="?", help="PyTorch checkpoint (.pth/.bin/.safetensors)")
  parser.add_argument("--arch", choices=sorted(pdu.PRESETS) + list(backbones.BACKBONES),
                      help="architecture; for de-raining nets inferred from the keys when omitted")
  parser.add_argument("--download", choices=sorted(backbones.DOWNLOADS),
                      help="fetch these public weights (SHA-256 checked, cached in "
                           "$SAPNET_JAX_CACHE or ~/.cache/sapnet_jax) instead of reading SRC")
  parser.add_argument("--out", required=True,
                      help="output: an Orbax checkpoint directory or a FILE.npz (backbones: .npz)")
  args = parser.parse_args(argv)
  if (args.src is None) == (args.download is None):
    parser.error("give either SRC or --download NAME")
  try:
    src = backbones.fetch_backbone(args.download) if args.download else args.src
    arch = args.arch or args.download
    if arch in backbones.BACKBONES:
      arrays = backbones.load_backbone(src, arch)
      _save_flat(arrays, args.out)
      n = sum(int(np.size(v)) for v in arrays.values())
      print(f"wrote {args.out} ({arch}, {len(arrays)} arrays, {n:,} values)")
      return 0
    model = torch_layout.load_pth(src, arch)
  except (PthError, torch_layout.ConversionError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  model_files.save_model(model, args.out)
  print(f"wrote {args.out} ({torch_layout.describe(model.cfg)}, "
        f"{models.count_params(model):,} parameters)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
