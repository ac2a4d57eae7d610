"""galmerge.evaluation."""
