"""Labelled image sets on their way into a model.

- ``datasets``: ``load_imageset("survey:arg?options")`` through the survey plugins.
- ``splits``: train/validation/test splits by seed.
- ``preprocess``: the preprocessing spec saved with every model and the function applying it.
- ``batches``: endless source/target batch streams, one batch of each per training step.

May import: ``galmerge.plugin``, ``galmerge.io``, ``galmerge.runtime``, ``galmerge.errors``.
"""
