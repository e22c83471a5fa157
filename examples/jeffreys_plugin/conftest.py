"""Lets `pytest examples/jeffreys_plugin` import the package without installing it (pytest puts this directory on sys.path)."""
