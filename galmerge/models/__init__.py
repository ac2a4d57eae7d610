"""galmerge.models."""
