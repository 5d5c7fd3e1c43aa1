"""sapnet_jax: SAPNet / PReNet single-image de-raining in JAX and Flax NNX."""

__version__ = "0.1.0"
