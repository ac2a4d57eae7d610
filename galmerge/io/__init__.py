"""galmerge.io."""
