"""Metric families: one module each, every one a mergeable streaming accumulator."""
