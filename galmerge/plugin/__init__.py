"""galmerge.plugin."""
