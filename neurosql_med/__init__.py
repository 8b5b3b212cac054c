"""nsql-med: synthetic brain MRI cohorts from a few dozen scans with NeuroSQL."""
from neurosql_med.version import __version__

__all__ = ["__version__", "load_model", "SyntheticDataset", "SampleOptions"]


def __getattr__(name: str):
    """Import torch-heavy entry points on first use, so `nsql-med --version` stays instant."""
    if name == "load_model":
        from neurosql_med.io.model import load_model

        return load_model
    if name == "SyntheticDataset":
        from neurosql_med.synthesis.dataset import SyntheticDataset

        return SyntheticDataset
    if name == "SampleOptions":
        from neurosql_med.synthesis.options import SampleOptions

        return SampleOptions
    raise AttributeError(f"module 'neurosql_med' has no attribute {name!r}")
