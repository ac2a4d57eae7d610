"""galmerge.classification.pipeline."""
