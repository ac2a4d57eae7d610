"""A fast, physically grounded renderer of merging and non-merging galaxies (synthetic surveys).

Scenes (scene.py) are drawn in physical units; a preset (presets.py) observes them with its
redshift, PSF, noise and field (instrument.py); draw.py renders batches with torch.
"""

from __future__ import annotations

from galmerge.surveys.synthetic.render.draw import Observation, draw_scenes, observe
from galmerge.surveys.synthetic.render.presets import PRESETS, Preset, get_preset
from galmerge.surveys.synthetic.render.scene import KIND_NAMES, Scenes, sample_scenes

#: bump whenever a change alters rendered pixels: cached synthetic sets are keyed on it
RENDERER_VERSION = 4

__all__ = [
    "KIND_NAMES",
    "PRESETS",
    "RENDERER_VERSION",
    "Observation",
    "Preset",
    "Scenes",
    "draw_scenes",
    "get_preset",
    "observe",
    "sample_scenes",
]
