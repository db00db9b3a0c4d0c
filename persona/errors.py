"""One error root for the whole project.

Every error Persona raises on purpose derives from :class:`PersonaError` and,
where one fits, from the matching builtin, so callers may catch either.
``transient`` tells retry logic whether trying again can help.
Errors carry context (chunk key, stage, request id) so a user sees which file,
record or chunk was wrong.
"""
from __future__ import annotations


class PersonaError(Exception):
    """Root of every error Persona raises deliberately."""

    transient: bool = False

    def __init__(self, message: str, **context: object) -> None:
        super().__init__(message)
        self.message = message
        self.context = {k: v for k, v in context.items() if v is not None}

    def __reduce__(self):  # keep the context when an error crosses a process boundary
        return (_rebuild, (type(self), self.message, self.context))

    def __str__(self) -> str:
        if not self.context:
            return self.message
        where = ", ".join(f"{k}={v}" for k, v in self.context.items())
        return f"{self.message} ({where})"


def _rebuild(cls: type[PersonaError], message: str, context: dict[str, object]) -> PersonaError:
    err = cls.__new__(cls)
    PersonaError.__init__(err, message, **context)
    return err


class ConfigError(PersonaError, ValueError):
    """A configuration key is missing, unknown or has a bad value; names the key path."""


class ChunkFormatError(PersonaError, ValueError):
    """An AGD chunk file is malformed; names the chunk key and what is wrong."""


class ManifestError(PersonaError, ValueError):
    """An AGD manifest is missing, malformed or disagrees with the chunks."""


class DatasetError(PersonaError, ValueError):
    """A dataset lacks what an operation needs (a column, a reference, ...)."""


class InputFormatError(PersonaError, ValueError):
    """An input file (FASTQ, SAM, BAM, FASTA) is malformed; names file and line/record."""


class StoreError(PersonaError, OSError):
    """A storage backend failed."""

    transient = True


class StoreKeyError(PersonaError, KeyError):
    """A key does not exist in a store."""

    def __str__(self) -> str:  # KeyError would repr() the message otherwise
        return PersonaError.__str__(self)


class StoreUnavailableError(PersonaError, ImportError):
    """A store backend's optional library is missing; the message says how to install it."""


class ReferenceNotFoundError(PersonaError, LookupError):
    """A reference genome does not exist or its index is unusable."""


class PipelineError(PersonaError, RuntimeError):
    """A PTF pipeline is misconfigured (rejected by the builder) or failed."""


class StageError(PersonaError, RuntimeError):
    """A stage raised while processing a feed; names stage, batch and feed."""


class BatchCancelled(PersonaError, RuntimeError):
    """A batch was cancelled before it completed."""


class AlignerError(PersonaError, RuntimeError):
    """The aligner could not run (bad options, unusable index)."""


class DatasetBusyError(DatasetError):
    """Another writer holds the dataset (its claim names the holder)."""


class ConcurrentWriteError(DatasetError):
    """The dataset changed under a writer (its claim was broken, or another commit landed first)."""
