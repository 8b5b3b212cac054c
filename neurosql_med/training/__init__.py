"""The trainer: scans in memory → a model folder."""
