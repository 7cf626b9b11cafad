"""The version of geofm, written only here: ``pyproject.toml`` reads it when the package is built.

A leaf module (it imports nothing), so any module can stamp the version on what it writes
without importing the package above it.
"""

__version__ = "0.1.0"
