"""The package's version, in a module of its own so every module can import it at the top."""

__version__ = "0.1.0"
