"""galmerge.surveys.synthetic."""
