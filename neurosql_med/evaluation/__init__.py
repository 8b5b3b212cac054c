"""How good a synthetic cohort is: metrics, the `evaluate` report, the benchmark and its baselines."""
