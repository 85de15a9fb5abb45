"""GeoSem: pre-training transfer between geometry and semantics, from datasets to result tables."""

__version__ = "0.1.0"
