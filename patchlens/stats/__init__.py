"""Resampling statistics: bootstrap intervals and paired model comparisons over per-unit records
kept by the task evaluators (see docs/protocols.md#resampling-units)."""
