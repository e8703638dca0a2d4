"""Typed exceptions. Library code raises these; only the CLI turns them into exit codes."""

from __future__ import annotations


class BarkitError(Exception):
    """An error the user can cause and fix (bad path, bad recipe, incompatible inputs).

    The CLI prints ``str(error)`` as one line on stderr and exits with status 2.
    """


class ConfigError(BarkitError):
    """A recipe or option that does not validate; the message names the field and the file."""


class IncompatibleError(BarkitError):
    """Inputs that cannot be combined (different bases, duplicate experts, shape mismatch)."""


class ArtifactError(BarkitError):
    """A missing, corrupt or foreign artifact folder."""


class DataError(BarkitError):
    """A user's dataset that cannot be used: missing, malformed, empty, or a row without a field.

    The message names the file and the line (JSONL) or row index (Parquet, saved dataset).
    """


class VerifierError(BarkitError):
    """A verifier that failed on a row, or a user verifier that cannot be loaded."""
