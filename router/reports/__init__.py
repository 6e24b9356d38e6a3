"""Experiment reports: statistics over sufficient statistics, the report document and its renderings."""
