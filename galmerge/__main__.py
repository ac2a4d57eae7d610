"""`python -m galmerge` (and `torchrun -m galmerge ...`)."""

from galmerge.cli import main

main()
