"""Base class of every speechkit config dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class SpeechkitDataclass:
    """Base of all registered configs.

    ``_name`` is the registry name the config belongs to (set on registration and when a config
    group is selected), the discriminator fairseq calls ``_name`` as well.
    """

    _name: Any = field(default=None, repr=False)
