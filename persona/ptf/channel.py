"""Compatibility name: the threaded gate lives in :mod:`persona.ptf.gate`."""
from persona.ptf.gate import Gate, GateClosed, GateTimeout

__all__ = ["Gate", "GateClosed", "GateTimeout"]
