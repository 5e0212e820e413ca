"""Subcommands of ``pdsn``, one module each, each registering its own parser."""
