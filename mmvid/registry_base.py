"""The one registry class (:class:`Registry`: a name -> a builder) of every plug-in family and of the data
sources, in a module that imports nothing of mmvid's but its errors, so that the data layer (SOURCES,
mmvid.data.sources) and the plug-in families (mmvid.registry: FUSIONS, AUGMENTS, BALANCERS, CALIBRATIONS) share
it without importing each other. Users import it as ``mmvid.registry.Registry``."""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Callable, Generic, TypeVar

from mmvid.errors import MmvidError

T = TypeVar("T")


@dataclasses.dataclass
class NoSettings:
    """The settings of a plug-in that reads none."""


class Registry(Generic[T]):
    """Maps a name to a builder. Duplicate names are a ``ValueError``; unknown names list the choices."""

    def __init__(self, kind: str, args_key: str | None = None) -> None:
        self.kind = kind
        self.args_key = args_key or f"{kind}.args"  # the config mapping that holds an entry's settings (balance.args)
        self._entries: dict[str, Callable[..., T]] = {}
        self._docs: dict[str, str] = {}

    def register(self, name: str, doc: str | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(builder: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            if isinstance(builder, type):  # its own Settings, or none (never a parent's)
                builder.Settings = builder.__dict__.get("Settings", NoSettings)
                if not dataclasses.is_dataclass(builder.Settings):
                    raise TypeError(f"{self.kind} {name!r}: Settings must be a dataclass")
            self._entries[name] = builder
            text = doc or (builder.__doc__ or "").strip().splitlines()
            self._docs[name] = text if isinstance(text, str) else (text[0] if text else "")
            return builder

        return deco

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._entries[name]
        except KeyError:
            raise MmvidError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            ) from None

    def build(self, name: str, *args, **kwargs) -> T:
        return self.get(name)(*args, **kwargs)

    def settings(self, name: str) -> type:
        """The Settings dataclass of entry ``name`` (an unknown name is the one-line error of :meth:`get`)."""
        return getattr(self.get(name), "Settings", NoSettings)

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def describe(self) -> dict[str, str]:
        return {n: self._docs[n] for n in self.names()}

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)
