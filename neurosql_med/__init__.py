"""nsql-med: synthetic brain MRI cohorts from a few dozen scans with NeuroSQL."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("nsql-med")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
