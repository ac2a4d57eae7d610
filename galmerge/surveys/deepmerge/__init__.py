"""Built-in survey ``illustris`` and the DeepMerge II data: sets, download, ``galmerge reproduce``."""
