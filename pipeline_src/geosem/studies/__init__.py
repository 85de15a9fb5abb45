"""Studies: grids of runs expanded into per-run snapshots (``geosem.snapshot``) with stable, readable ids."""

from geosem.studies.grid import load_study
from geosem.studies.plan import Plan, plan_runs

__all__ = ["Plan", "load_study", "plan_runs"]
