"""The `dartrt` command line (see `dartrt --help`)."""

__version__ = "0.1.0"
