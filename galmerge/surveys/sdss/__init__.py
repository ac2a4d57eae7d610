"""galmerge.surveys.sdss."""
