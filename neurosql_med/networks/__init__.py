"""Generator networks."""
from neurosql_med.networks.decoder import Decoder

__all__ = ["Decoder"]
