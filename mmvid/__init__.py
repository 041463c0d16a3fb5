"""mmvid: multimodal video classification with Multimodal Mixup (MM) and Balanced MM (B-MM).

The Python API (:mod:`mmvid.api`) is importable from here; torch and the rest load on first use, so that
``import mmvid`` stays fast::

    import mmvid
    mmvid.prepare("demo")
    run = mmvid.train(recipe="demo", epochs=1, aug="bmm")
    mmvid.evaluate(run)["accuracy"]
"""

from mmvid._version import __version__
from mmvid.errors import MmvidError

_API = ("Run", "prepare", "train", "evaluate", "robustness", "visualize", "report", "sweep", "diagnose", "recipes")
__all__ = ["MmvidError", "__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from mmvid import api

        return getattr(api, name)
    raise AttributeError(f"module 'mmvid' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
