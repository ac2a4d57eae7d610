"""Built-in survey ``synthetic``: merging and non-merging galaxies rendered on demand (``render/``)."""
