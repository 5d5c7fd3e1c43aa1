"""Official SAPNet, PReNet and PRN PyTorch state_dicts as sapnet_jax models, without PyTorch:
the torch parameter layout (OIHW kernels, ConvLSTM gates fused in i, f, g, o order) mapped onto
the PDU network's variables. Every tensor must be used and every shape must match; otherwise the
error names the key."""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Mapping

import jax
import numpy as np
from flax import nnx

from sapnet_jax import models
from sapnet_jax.models import pdu
from sapnet_jax.weights import model_files
from sapnet_jax.weights.pth import load_state_dict


GATE_ORDER = ("i", "f", "g", "o")  # order of the fused ConvLSTM gate kernel's output blocks


class ConversionError(ValueError):
  """A state_dict that does not fit the requested architecture."""


def strip_prefix(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Drops the `module.` prefix that nn.DataParallel adds to every key."""
  return {re.sub(r"^module\.", "", k): v for k, v in state_dict.items()}


def infer_arch(state_dict: Mapping[str, np.ndarray]) -> str:
  """Tells SAPNet, PReNet and PRN checkpoints apart by their keys."""
  keys = strip_prefix(state_dict).keys()
  if any(".conv_du." in k for k in keys):
    return "sapnet"
  if any(k.startswith("conv_i.") for k in keys):
    return "prenet"
  if any(k.startswith("res_conv1.") for k in keys):
    return "prn"
  raise ConversionError(
      "cannot tell the architecture from the keys (expected SAPNet/PReNet/PRN keys such as "
      f"'conv0.0.weight', 'res_conv1.0.weight'); first keys: {sorted(keys)[:5]}")


def conv_kernel(w: np.ndarray) -> np.ndarray:
  return np.transpose(w, (2, 3, 1, 0))  # OIHW -> HWIO


def linear_1x1(w: np.ndarray) -> np.ndarray:
  return np.transpose(w[:, :, 0, 0], (1, 0))  # (out, in, 1, 1) -> (in, out)


def _torch_layout(cfg: pdu.PDUConfig) -> dict[str, tuple[str, Callable | None]]:
  """Maps each official key to (our flat parameter path, array transform)."""
  if cfg.attention not in ("cra", "none"):
    raise ConversionError(f"no official checkpoint layout for attention {cfg.attention!r}")
  layout = {"conv0.0.weight": ("conv0/kernel", conv_kernel), "conv0.0.bias": ("conv0/bias", None),
            "conv.0.weight": ("out/kernel", conv_kernel), "conv.0.bias": ("out/bias", None)}
  for g in GATE_ORDER if cfg.recurrent else ():
    layout[f"conv_{g}.0.weight"] = ("gates/kernel", conv_kernel)
    layout[f"conv_{g}.0.bias"] = ("gates/bias", None)
  # Sequential indices of the second conv and the attention layers inside res_conv{k}.
  conv2, atts = (3, (1, 4)) if cfg.attention == "cra" else (2, ())
  for b in range(cfg.num_blocks):
    src, dst = f"res_conv{b + 1}", f"blocks/{b}"
    for idx, name in ((0, "conv1"), (conv2, "conv2")):
      layout[f"{src}.{idx}.weight"] = (f"{dst}/{name}/kernel", conv_kernel)
      layout[f"{src}.{idx}.bias"] = (f"{dst}/{name}/bias", None)
    for idx, name in zip(atts, ("att1", "att2")):
      layout[f"{src}.{idx}.conv_du.0.weight"] = (f"{dst}/{name}/down/kernel", linear_1x1)
      layout[f"{src}.{idx}.conv_du.2.weight"] = (f"{dst}/{name}/up/kernel", linear_1x1)
      layout[f"{src}.{idx}.conv_1_1.weight"] = (f"{dst}/{name}/residual/kernel", linear_1x1)
  return layout


def pdu_from_state_dict(state_dict: Mapping[str, np.ndarray], cfg: pdu.PDUConfig) -> pdu.PDUNet:
  """Builds a PDUNet with `cfg` and fills it from an official PyTorch state_dict."""
  sd = strip_prefix(state_dict)
  layout = _torch_layout(cfg)
  missing = sorted(set(layout) - set(sd))
  unused = sorted(set(sd) - set(layout))
  if missing or unused:
    parts = []
    if missing:
      parts.append(f"missing keys: {', '.join(missing)}")
    if unused:
      parts.append(f"unused keys: {', '.join(unused)}")
    raise ConversionError(f"state_dict does not match {describe(cfg)}: " + "; ".join(parts))
  model = nnx.eval_shape(lambda: pdu.PDUNet(cfg, rngs=nnx.Rngs(0)))
  shapes = {k: v.shape for k, v in model_files.flatten(model_files.params_dict(model)).items()}
  flat: dict[str, np.ndarray] = {}
  gates: dict[str, list[np.ndarray]] = {"gates/kernel": [], "gates/bias": []}
  for key, (path, fn) in layout.items():
    value = np.asarray(sd[key])
    if fn is not None:
      if value.ndim != 4:
        raise ConversionError(f"{key}: expected a 4-d tensor, got shape {value.shape}")
      value = fn(value)
    expected = shapes[path]
    if path in gates:  # one of the four blocks of the fused gate parameter, in GATE_ORDER
      expected = expected[:-1] + (expected[-1] // 4,)
    if value.shape != tuple(expected):
      raise ConversionError(f"{key}: shape {value.shape} after conversion does not match the "
                            f"model's {tuple(expected)} at {path}")
    value = value.astype(np.float32)
    if path in gates:
      gates[path].append(value)
    else:
      flat[path] = value
  if cfg.recurrent:
    flat.update({path: np.concatenate(parts, axis=-1) for path, parts in gates.items()})
  return model_files.fill_params(model, model_files.unflatten(flat), describe(cfg))


def describe(cfg: pdu.PDUConfig) -> str:
  return models.preset_name(cfg) or str(cfg)


def load_pth(path: str, arch: str | None = None, **overrides) -> pdu.PDUNet:
  """Reads an official .pth and returns the converted model; `arch` is inferred if None.

  `overrides` replace fields of the architecture preset (e.g. scan=True, dtype="bfloat16").
  """
  sd = load_state_dict(path)
  arch = arch or infer_arch(sd)
  if arch not in pdu.PRESETS:
    raise ConversionError(f"--arch must be one of {sorted(pdu.PRESETS)}, got {arch!r}")
  try:
    cfg = dataclasses.replace(pdu.PRESETS[arch], **overrides)
    return pdu_from_state_dict(sd, models.resolve_impl(cfg, jax.local_devices()[0].platform))
  except ConversionError as e:
    raise ConversionError(f"{path}: {e}") from None
