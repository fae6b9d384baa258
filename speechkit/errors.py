"""Errors speechkit raises for bad input: each message names what was wrong and what was expected.

``speechkit.train`` prints these as one line (``speechkit: error: ...``) and exits with status 2,
instead of a traceback, because they describe the user's input rather than a bug.
"""

from __future__ import annotations

import re

_WORKER_WRAPPED = re.compile(r"Caught (\w+) (in [^\n]*?)\.?\nOriginal Traceback")


class SpeechkitError(Exception):
    """Base of errors caused by the user's input (config, data, files).

    An error raised inside a DataLoader worker reaches the main process re-built by torch's
    ``ExceptionWrapper.reraise`` as ``type(e)("Caught DataError in DataLoader worker process 0.
    Original Traceback ...")``; that message is cut back here to the original one-line message,
    so the command line still prints one line.
    """

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str) and _WORKER_WRAPPED.match(args[0]):
            args = (_unwrap_worker_message(args[0], type(self)),)
        super().__init__(*args)


def _unwrap_worker_message(text: str, cls: type) -> str:
    """The original message of a worker traceback: what follows the last ``module.Name: ``."""
    head = f"{cls.__module__}.{cls.__qualname__}: "
    start = text.rfind("\n" + head)
    if start < 0:
        return text
    return text[start + 1 + len(head) :].rstrip("\n")


class ConfigError(SpeechkitError, ValueError):
    """A config value, registry name or override is wrong."""


class DataError(SpeechkitError, ValueError):
    """A data file, list line, manifest or audio file is missing, malformed or unsupported.

    Messages name the file and, where there is one, the line number (1-based).
    """


class CheckpointError(SpeechkitError, ValueError):
    """A checkpoint is missing, unreadable, of an unknown layout or refused as unsafe."""


class OutputError(SpeechkitError, OSError):
    """An output file could not be written: full disk, file-size limit, read-only or missing
    folder. The message names the file, the OS reason and, when space ran out, the space needed
    and free; the file's previous content (if any) is untouched. ``errno`` is the OS error's."""
