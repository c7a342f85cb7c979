"""Comparisons read back from MLflow (the study's runs), and the MLflow UI launcher.

python -m dashboards.ui
"""
