"""One registry for the things a training config names: backbones, heads, losses.

A module registers a builder with a decorator where it is defined (as timm's
`register_model`), so adding a loss means writing the loss, nothing else. A builder's
keyword-only parameters are its hyper-parameters: `build` refuses any other by name, and a
registration may carry traits the trainer reads instead of keying on names (a loss that needs
P×K batches, one that needs the number of classes)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    builder: Callable[..., T]
    traits: dict[str, Any] = field(default_factory=dict)

    @property
    def hparams(self) -> tuple[str, ...]:
        """The keyword-only parameter names of the builder (of `__init__` for a class)."""
        target = self.builder.__init__ if inspect.isclass(self.builder) else self.builder
        parameters = inspect.signature(target).parameters.values()
        return tuple(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)


class Registry(Generic[T]):
    def __init__(self, kind: str, plural: str | None = None) -> None:
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, **traits: Any) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorate(builder: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = Entry(name, builder, traits)
            return builder

        return decorate

    @property
    def names(self) -> tuple[str, ...]:
        """In registration order: the order a module defines them in."""
        return tuple(self._entries)

    def key(self, name: str) -> str:
        """Names are case-insensitive and take - for _."""
        return name.strip().lower().replace("-", "_")

    def entry(self, name: str) -> Entry[T]:
        key = self.key(name)
        if key not in self._entries:
            raise ValueError(
                f"unknown {self.kind} {name!r}; valid {self.plural}: {', '.join(self.names)}"
            )
        return self._entries[key]

    def trait(self, name: str, trait: str, default: Any = None) -> Any:
        return self.entry(name).traits.get(trait, default)

    def build(self, name: str, *args: Any, **hparams: Any) -> T:
        entry = self.entry(name)
        unknown = sorted(set(hparams) - set(entry.hparams))
        if unknown:
            raise ValueError(
                f"{self.kind} {entry.name!r} does not take {', '.join(unknown)}; "
                f"it takes: {', '.join(entry.hparams) or 'no hyper-parameters'}"
            )
        return entry.builder(*args, **hparams)
