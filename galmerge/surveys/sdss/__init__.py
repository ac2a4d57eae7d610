"""Built-in survey ``sdss``: the DeepMerge II SDSS set for training, cutouts for classification."""
