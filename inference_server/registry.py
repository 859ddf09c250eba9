"""A table of backends by name, filled where each backend is defined.

Detectors and LLM backends (and the embedders and enrichers to come) each keep one `Registry`:
a backend module decorates its factory with ``@REGISTRY.register("name")``, and the one place
that chooses a backend from the settings calls ``REGISTRY.get(name)``. Adding a backend is a new
module, not an edit to the code that uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

F = TypeVar("F", bound=Callable[..., object])


class Registry(Generic[F]):
    """Factories of one kind of backend (``F``: the factory's type), by name."""

    def __init__(self, kind: str) -> None:
        #: What the names name, for the error on an unknown one (``"detector_backend"``).
        self.kind = kind
        self._factories: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """A decorator that registers a factory as ``name`` (a later one replaces it) and returns it."""

        def wrap(factory: F) -> F:
            self._factories[name] = factory
            return factory

        return wrap

    def get(self, name: str) -> F:
        """The factory registered as ``name``; ``ValueError`` listing the known names otherwise."""
        try:
            return self._factories[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {sorted(self._factories)}") from None
