"""The installed version, in a module of its own: modules that stamp it into files import it
from here, so they form no cycle with the package root's lazy entry points."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("nsql-med")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"
