"""covidxray's version (read by the package, the command line and pyproject.toml)."""

__version__ = "0.1.0"
