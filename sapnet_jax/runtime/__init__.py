"""Process-wide JAX/XLA settings: the persistent compilation cache, XLA compiler options and
XLA:CPU memory, applied by entry points only where they were measured to help.

May import: utils, models, metrics, weights, losses, data.
"""
