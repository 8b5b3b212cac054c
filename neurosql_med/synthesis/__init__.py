"""Sampling a trained model: decoding fresh draws, cohorts on disk, the copy audit, a MONAI dataset."""
