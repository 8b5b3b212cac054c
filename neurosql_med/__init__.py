"""nsql-med: synthetic brain MRI cohorts from a few dozen scans with NeuroSQL."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("nsql-med")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"

__all__ = ["__version__", "load_model", "SyntheticDataset"]


def __getattr__(name: str):
    """Import torch-heavy entry points on first use, so `nsql-med --version` stays instant."""
    if name == "load_model":
        from neurosql_med.io.model import load_model

        return load_model
    if name == "SyntheticDataset":
        from neurosql_med.synthesis.dataset import SyntheticDataset

        return SyntheticDataset
    raise AttributeError(f"module 'neurosql_med' has no attribute {name!r}")
