"""One small registry class for every plug-in family (fusions, augmentations, balancers).

Entries are registered by decorator at import time of an explicitly imported module
(``mmvid.models.fusions``, ``mmvid.augment``, ``mmvid.balance``); nothing scans folders.
"""

from __future__ import annotations

import fnmatch
from typing import Callable, Generic, TypeVar

from mmvid.errors import MmvidError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a name to a builder. Duplicate names are a ``ValueError``; unknown names list the choices."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}
        self._docs: dict[str, str] = {}

    def register(self, name: str, doc: str | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(builder: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
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

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def describe(self) -> dict[str, str]:
        return {n: self._docs[n] for n in self.names()}

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)


class Plugin:
    """What augmentations and balancers share: per-epoch logging and state that survives a resume."""

    # What the plug-in steers on, which the engine then measures after every epoch (engine.monitor_plan):
    # ctx.train_scores (per-modality s_m over the train set): False: not needed; "any": a monitor over a fixed
    # subsample of the train rows will do; "full" (or True): the whole train set, whatever monitor_train says.
    needs_train_scores: bool | str = False
    needs_val_scores: bool = False  # ctx.val_scores every epoch, whatever eval_every says
    # Held-out clips of its own (G-Blend's weights, LFM's learned schedule...): refused under protocol reference,
    # which holds no validation split out (mmvid.workflows.reference_refusal).
    needs_val_split: bool = False

    def __setattr__(self, name: str, value) -> None:
        # A plug-in's own attribute named like a hook (``self.epoch_order = [...]``) would hide the hook from
        # the training loop, which would then fail far from the cause.
        hook = getattr(type(self), name, None)
        if callable(hook) and not callable(value):
            raise TypeError(f"{type(self).__name__}.{name} is a hook of the training loop; name the attribute otherwise")
        super().__setattr__(name, value)

    def on_epoch_start(self, ctx) -> None:
        pass

    def log(self) -> dict:
        """Coefficients for this epoch's metrics.jsonl line."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


FUSIONS: Registry = Registry("fusion")
AUGMENTS: Registry = Registry("augmentation")
BALANCERS: Registry = Registry("balancer")


def load_plugins() -> None:
    """Import every module that registers entries (explicit imports, no scanning)."""
    import mmvid.augment  # noqa: F401
    import mmvid.balance  # noqa: F401
    import mmvid.models.fusions  # noqa: F401
