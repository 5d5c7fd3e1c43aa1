"""The web app behind `serve`: HTTP API and page (`web_app`), request batching on one device
(`batching`), who may use it (`access_rules`) and its web assets (web/).

May import: utils, models, data, runtime, infer. It takes a built model, so it never imports
the weights, the losses or training; loading weights is the `serve` command's job.
"""
