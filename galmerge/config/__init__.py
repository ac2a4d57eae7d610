"""galmerge.config."""
