"""``make bench``: speed and memory figures, printed as a table (see bench/__main__.py)."""
