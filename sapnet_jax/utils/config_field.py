"""Reading one field of a config block, whatever holds it: a ConfigDict, a dict or a dataclass.

Losses, objectives and the input pipeline all read fields this way, so a missing field fails
the same way everywhere, naming `<where>.<name>`. Imports nothing from the package, so every
layer may use it.
"""

from __future__ import annotations

from typing import Any

REQUIRED = object()  # the default of `field`: a missing field is an error


def field(cfg: Any, name: str, default: Any = REQUIRED, *, where: str = "config",
          error: type[Exception] = ValueError) -> Any:
  """`cfg[name]` (or `cfg.name` for a dataclass); `default` when the field is absent or None.

  Without a default, an absent field raises `error` naming `where.name`; a field set to None
  is then returned as None (e.g. weights that are not given).
  """
  try:
    value = cfg[name]
  except KeyError:
    value = REQUIRED
  except TypeError:  # not subscriptable: a dataclass or other plain object (or None)
    value = getattr(cfg, name, REQUIRED)
  if value is REQUIRED or (value is None and default is not REQUIRED):
    if default is REQUIRED:
      raise error(f"{where}.{name} is missing") from None
    return default
  return value
