"""galmerge.runtime."""
