"""galmerge.config.resolve."""
