"""chatd: one chat with several wire formats (README.md)."""

#: chatd's version, the one setup.cfg installs (``version = attr:``).
__version__ = "0.1.0"
