"""Example model variants: churn models trained on synthetic data and a tiny remote model server.

Nothing here is imported by the gateway at request time; `python -m variants.train` dumps the
models the example configs name, and `python -m variants.model_server` serves one over HTTP.
"""
