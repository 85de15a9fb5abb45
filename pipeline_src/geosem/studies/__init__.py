"""Studies: grids of runs expanded into per-run snapshots with stable, readable ids."""

from geosem.studies.plan import Plan, load_study, plan_runs, run_digest, write_run_snapshot

__all__ = ["Plan", "load_study", "plan_runs", "run_digest", "write_run_snapshot"]
