"""Exceptions bgekit raises for problems a user can fix."""

from __future__ import annotations


class BgekitError(Exception):
    """Base class of bgekit's own errors."""


class ModelNotFoundError(BgekitError):
    """The model is neither a local folder nor reachable/cached on the hub."""


class ModelFormatError(BgekitError):
    """The model folder is missing something bgekit needs, or holds something it cannot run."""


class MissingHeadError(BgekitError):
    """An output was asked for that this model has no head for."""


class InputError(BgekitError, ValueError):
    """The input texts or pairs are not usable (wrong type, empty, ...)."""
