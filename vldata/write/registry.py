"""Find builders: every class registered under the ``vldata.builders`` entry-point group.

A third-party package adds a dataset by declaring its Builder subclass in that group; nothing in
vldata names a dataset.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from vldata.write.builder import Builder, StructuralError

GROUP = "vldata.builders"


def _entry_points() -> dict:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def list_builders() -> list[str]:
    """Names of the installed builders, sorted."""
    return sorted(_entry_points())


def builder_class(name: str) -> type[Builder]:
    eps = _entry_points()
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none installed"
        raise StructuralError(f"unknown builder '{name}' (known: {known})")
    cls = eps[name].load()
    if not (isinstance(cls, type) and issubclass(cls, Builder)):
        raise StructuralError(f"entry point '{name}' is not a vldata Builder: {cls!r}")
    return cls


def get_builder(name: str, **config: Any) -> Builder:
    """An instance of builder ``name`` with a validated config (unknown keys are errors)."""
    return builder_class(name)(**config)
