"""galmerge.data."""
