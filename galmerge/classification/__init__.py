"""galmerge.classification."""
