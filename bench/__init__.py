"""`make bench`: the end-to-end benchmark of issue 6 (see bench/__main__.py)."""
