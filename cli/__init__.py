"""The `ember` command line: the face of the system, on top of every other layer."""
