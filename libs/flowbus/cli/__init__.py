"""The ``flowbus`` command line."""
