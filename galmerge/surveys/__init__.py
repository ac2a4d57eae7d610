"""galmerge.surveys."""
