"""Aggregation of finished runs into the papers' table layouts, DVC metrics and plots."""

from geosem.aggregate.tables import aggregate_study, collect_runs, render_study

__all__ = ["aggregate_study", "collect_runs", "render_study"]
