"""galmerge.evaluation.pipeline."""
