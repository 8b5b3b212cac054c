"""Hand-overs of a trained model in other ecosystems' formats (a MONAI Bundle)."""
