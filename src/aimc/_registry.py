"""Things of one kind by name: the registry behind device models, reference networks and tasks.

A :class:`Registry` holds built-in entries, which cannot be replaced or removed, and entries registered by users.
Every lookup of an unknown name raises the same error, naming the kind and every name available::

    unknown device model name 'hermes-3dev'; available: 'standard', 'standard+verify', ...
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Generic, TypeVar

from aimc.errors import ArgumentTypeError, UnknownNameError, ValidationError

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries of one kind by name, in registration order (built-in entries first).

    Args:
        kind: what the entries are, for messages (``"device model"``, ``"model"``, ``"task"``).
        builtin: entries that cannot be replaced or removed.
    """

    def __init__(self, kind: str, builtin: Mapping[str, T] | None = None) -> None:
        self.kind = kind
        self._builtin: dict[str, T] = dict(builtin or {})
        self._user: dict[str, T] = {}

    def available(self) -> list[str]:
        """Every name :meth:`get` accepts."""
        return [*self._builtin, *self._user]

    def __contains__(self, name: object) -> bool:
        return name in self._builtin or name in self._user

    def unknown(self, name: str) -> UnknownNameError:
        """The error of a lookup of ``name``, which is not available: it names the available ones."""
        return UnknownNameError(
            f"unknown {self.kind} name {name!r}; available: {', '.join(map(repr, self.available()))}"
        )

    def get(self, name: str) -> T:
        """The entry ``name``.

        Raises:
            ArgumentTypeError: ``name`` is not a str.
            UnknownNameError: ``name`` is not one of :meth:`available` (the message lists them).
        """
        if not isinstance(name, str):
            raise ArgumentTypeError(f"{self.kind} name must be a str, got {type(name).__name__} {name!r}")
        if name in self._user:
            return self._user[name]
        if name in self._builtin:
            return self._builtin[name]
        raise self.unknown(name)

    def register(self, name: str, entry: T, *, replace: bool = False) -> None:
        """Make ``entry`` available under ``name``.

        Args:
            name: a non-empty str that is not a built-in name.
            entry: what :meth:`get` returns for ``name``.
            replace: allow replacing an entry registered before under ``name``.
        """
        if not isinstance(name, str) or not name:
            raise ArgumentTypeError(f"{self.kind} name must be a non-empty str, got {name!r}")
        if name in self._builtin:
            raise ValidationError(f"name {name!r} is a built-in {self.kind} and cannot be overwritten")
        if name in self._user and not replace:
            raise ValidationError(
                f"a {self.kind} named {name!r} is already registered (pass replace=True to replace it)"
            )
        self._user[name] = entry

    def unregister(self, name: str) -> None:
        """Remove an entry registered with :meth:`register` (built-in entries cannot be removed)."""
        if name in self._builtin:
            raise ValidationError(f"name {name!r} is a built-in {self.kind} and cannot be removed")
        if name not in self._user:
            raise UnknownNameError(f"no user {self.kind} named {name!r}; registered: {sorted(self._user)}")
        del self._user[name]


__all__ = ["Registry"]
