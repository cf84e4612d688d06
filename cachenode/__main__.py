"""`python -m cachenode` runs the command line."""

from .cli import main

main()
