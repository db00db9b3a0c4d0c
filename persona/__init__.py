"""Persona: pipelined genomic secondary analysis on AGD datasets."""
from persona.errors import PersonaError

__version__ = "0.1.0"
__all__ = ["PersonaError", "__version__"]
