"""Benchmarks of curate against its alternatives (make bench); their figures are committed in results/."""
