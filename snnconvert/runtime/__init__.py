"""The torch simulator of the spiking IR, shared by the passes that need SNN statistics and
by the torch target."""
from .network import SpikingNetwork, param_key

__all__ = ["SpikingNetwork", "param_key"]
