"""galmerge.surveys.deepmerge."""
