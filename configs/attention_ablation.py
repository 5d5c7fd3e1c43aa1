"""Paper Table 2: SAPNet with SE, CA or CRA attention blocks (or none, "conv").

    python -m sapnet_jax.main --config=configs/attention_ablation.py:se --workdir=W
    (variants: se | ca | cra | conv; cra is configs/default.py)
"""

from configs import default

VARIANTS = {"se": "se", "ca": "ca", "cra": "cra", "conv": "none"}


def get_config(variant: str = "cra"):
  if variant not in VARIANTS:
    raise ValueError(f"configs/attention_ablation.py:{variant}: unknown variant; "
                     f"known: {sorted(VARIANTS)}")
  config = default.get_config()
  config.model.attention = VARIANTS[variant]
  return config
