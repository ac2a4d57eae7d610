"""The classifier: a backbone plus head, loading, inference and export.

- ``model``: the classifier (backbone + head) and its checkpoint format.
- ``inference``: a classifier over an image set in batches (the one prediction helper).
- ``export``: ONNX or TorchScript files that run without galmerge.
- ``backbones/``: the built-in feature extractors and their plugin module (``backbones.plugin``).

May import: ``galmerge.plugin``, ``galmerge.data``, ``galmerge.io``, ``galmerge.runtime``,
``galmerge.errors``.
"""
