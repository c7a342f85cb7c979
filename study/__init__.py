"""Studies: a YAML spec searched by Ray Tune + Optuna, each trial run by Ray Train, tracked in MLflow.

    python -m study.run search_spaces/quickstart.yaml
"""
