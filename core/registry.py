"""One registry type for every pluggable part: quantization methods (`quant.methods`), model
adapters (`denoisers.adapters`), scorers (`sampling.scorers`) and search strategies
(`search.strategies`). Each is a name → item mapping in registration order; adding a part is one
`register` call, never another branch in the code that uses it."""
from __future__ import annotations

from typing import Generic, Iterator, TypeVar

from core.errors import QsensError

T = TypeVar("T")


class Registry(Generic[T]):
    """name → item, in registration order. `what` names the items in errors ("quantization
    method"); `error` is the QsensError subclass raised (one line, naming the registered names)."""

    def __init__(self, what: str, error: type[QsensError] = QsensError) -> None:
        self.what = what
        self.error = error
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T, replace: bool = False) -> T:
        """Add `item` under `name` (returns it); `error` when the name is taken, unless `replace`."""
        if name in self._items and not replace:
            raise self.error(f"{self.what} {name!r} is already registered")
        self._items[name] = item
        return item

    def unregister(self, name: str) -> None:
        """Remove `name` (absent: nothing happens). For tests that register a toy item."""
        self._items.pop(name, None)

    def get(self, name: str) -> T:
        """The item of `name`; `error` naming the registered names otherwise."""
        try:
            return self._items[name]
        except KeyError:
            raise self.error(f"unknown {self.what} {name!r}; registered: {', '.join(self._items)}") from None

    def find(self, name: str) -> T | None:
        """The item of `name`, or None."""
        return self._items.get(name)

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._items.values()))
