"""The version of mmvid, in one place for the package (pyproject.toml states it for the installers)."""

__version__ = "0.1.0"
