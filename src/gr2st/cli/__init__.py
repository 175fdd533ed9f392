"""The ``gr2st`` command line."""
