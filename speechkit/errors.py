"""Errors speechkit raises for bad input: each message names what was wrong and what was expected.

``speechkit.train`` prints these as one line (``speechkit: error: ...``) and exits with status 2,
instead of a traceback, because they describe the user's input rather than a bug.
"""

from __future__ import annotations


class SpeechkitError(Exception):
    """Base of errors caused by the user's input (config, data, files)."""


class ConfigError(SpeechkitError, ValueError):
    """A config value, registry name or override is wrong."""


class DataError(SpeechkitError, ValueError):
    """A data file, list line, manifest or audio file is missing, malformed or unsupported.

    Messages name the file and, where there is one, the line number (1-based).
    """


class CheckpointError(SpeechkitError, ValueError):
    """A checkpoint is missing, unreadable, of an unknown layout or refused as unsafe."""
