"""The papers' ablation tables as seeded training runs: which config is each row (`tables`),
planning (`plan`), running (`runner`), scoring (`score_runs`) and the report (`report`);
`python -m sapnet_jax.experiments` runs them.

May import: utils, models, metrics, weights, losses, data, runtime, infer, evaluation,
training, serving.
"""
