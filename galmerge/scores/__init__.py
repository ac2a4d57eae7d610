"""galmerge.scores."""
