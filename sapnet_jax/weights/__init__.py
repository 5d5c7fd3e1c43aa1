"""Model weights on disk: the `.pth` reader (no torch), torch-layout and backbone conversion,
weight files saved with their architecture and a digest, the download cache, and the registry
of named weights (`pretrained.load`); the shipped .npz sits beside them.

May import: utils, models, metrics.
"""
