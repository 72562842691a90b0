"""`python -m langinterp` runs the same CLI as the `langinterp` console script."""

from langinterp.cli import main

main()
