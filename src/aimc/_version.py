"""The package version, defined here only: ``aimc.__version__`` and pyproject.toml read it."""

__version__ = "0.1.0"
