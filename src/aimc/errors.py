"""One family of exceptions for everything a user can get wrong.

Every error aimc raises on bad input is an :class:`AimcError`; each subclass also derives from the built-in
exception a Python user would expect (``ValueError``, ``TypeError``, ``KeyError``), so ``except ValueError`` keeps
working. Messages name the argument, the value received and what is allowed.
"""

from __future__ import annotations


class AimcError(Exception):
    """Base class of all errors raised by aimc on bad input or unsupported requests."""


class ValidationError(AimcError, ValueError):
    """An argument has a value outside what is allowed (range, finiteness, shape)."""


class ArgumentTypeError(AimcError, TypeError):
    """An argument has the wrong type or dtype."""


class UnknownNameError(AimcError, KeyError):
    """A name (device preset, read mode, strategy) is not one of the known ones."""

    def __str__(self) -> str:  # KeyError would otherwise print the message with quotes around it
        return str(self.args[0]) if self.args else ""


class CorruptFileError(ValidationError):
    """A file aimc was asked to read (saved chip, weights, checkpoint) is truncated, altered, crafted or not an
    aimc file; nothing from it is used."""
