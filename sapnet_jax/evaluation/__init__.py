"""Scoring a model on image pairs or rainy photos (`scoring`, the library of `evaluate`) and
several models side by side on the same images (`comparison`, the library of `compare`).

May import: utils, models, metrics, weights, losses, data, runtime, infer.
"""
