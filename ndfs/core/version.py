"""The version of ndfs (one place: the package, the CLI and the drivers' User-Agent read it here)."""

__version__ = "0.1.0"
