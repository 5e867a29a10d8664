"""Plain value classes without ``dataclasses``: its import (with
``inspect``, ``ast``, ``tokenize``) and the code it generates per class were
most of what `vmsnap mounts` and `vmsnap hook` spent before doing anything.

A subclass lists its fields in ``__slots__``, in order, and writes its own
``__init__`` (its parameters: the fields, in order); it gets what
``@dataclass`` gave: the repr, equality by value of the same class, and
(``Frozen``) no assignment after ``__init__`` and a hash of the values.  It
is still a dataclass to ``dataclasses.is_dataclass``, ``fields``, ``asdict``
and ``replace`` (for a program that uses them on the public classes): the
fields they read are made, importing ``dataclasses``, when first asked for."""

from __future__ import annotations

TYPE_CHECKING = False   # true for type checkers; `typing` is not imported for it
if TYPE_CHECKING:
    from typing import TypeVar
    _R = TypeVar("_R", bound="Record")


class _DataclassFields:
    """``cls.__dataclass_fields__``, made on first access (and then kept on
    the class): a ``dataclasses.Field`` per slot, as ``@dataclass`` makes them."""

    def __get__(self, obj: object, cls: type | None = None) -> dict[str, object]:
        import dataclasses
        assert cls is not None
        made: dict[str, object] = {}
        hints = {}
        for klass in reversed(cls.__mro__):
            hints.update(klass.__dict__.get("__annotations__", {}))
        for name in cls.__dict__.get("__slots__", ()):
            f = dataclasses.field()
            f.name, f.type = name, hints.get(name, "object")
            f._field_type = dataclasses._FIELD   # type: ignore[attr-defined]
            made[name] = f
        type.__setattr__(cls, "__dataclass_fields__", made)
        return made


class Record:
    """A mutable value: repr and equality from ``__slots__`` (unhashable, as a
    dataclass with eq is)."""

    __slots__: tuple[str, ...] = ()
    __dataclass_fields__ = _DataclassFields()

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, n) for n in self.__slots__)

    def __repr__(self) -> str:
        return "%s(%s)" % (type(self).__qualname__, ", ".join(
            "%s=%r" % (n, getattr(self, n)) for n in self.__slots__))

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Record)
        return self._values() == other._values()

    def fields(self) -> dict[str, object]:
        """The fields and their values, in order (shallow: what ``__dict__`` was)."""
        return {n: getattr(self, n) for n in self.__slots__}

    def replaced(self: _R, **changes: object) -> _R:
        """A copy with CHANGES (field: value), as ``dataclasses.replace``."""
        unknown = set(changes) - set(self.__slots__)
        if unknown:
            raise TypeError("%s has no field %s" % (type(self).__qualname__,
                                                    ", ".join(sorted(unknown))))
        new = object.__new__(type(self))
        for n in self.__slots__:
            object.__setattr__(new, n, changes[n] if n in changes else getattr(self, n))
        return new

    # (__eq__ defined and no __hash__: the class is unhashable, as a dataclass with eq)


class Frozen(Record):
    """An immutable value: assigning or deleting a field after ``__init__``
    (which sets them with ``object.__setattr__``) raises
    ``dataclasses.FrozenInstanceError``, as a frozen dataclass does."""

    __slots__ = ()

    def __setattr__(self, name: str, value: object) -> None:
        from dataclasses import FrozenInstanceError  # only on a mistake
        raise FrozenInstanceError("cannot assign to field %r" % name)

    def __delattr__(self, name: str) -> None:
        from dataclasses import FrozenInstanceError
        raise FrozenInstanceError("cannot delete field %r" % name)

    def __hash__(self) -> int:
        return hash(self._values())

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        # copy, deepcopy, pickle: through __init__ (its parameters are the fields, in order),
        # not by setting each field afterwards
        return (type(self), self._values())
