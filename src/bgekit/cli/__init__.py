"""The ``bgekit`` command line: a thin layer over the library."""
