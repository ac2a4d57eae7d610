"""galmerge.fractions."""
