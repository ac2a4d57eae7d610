"""Input checks of the Python API: an ImageSet's band names against its channels.

Each mistake is one GalmergeError naming the thing and the fix, before any work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import galmerge


def _imageset(channels: int = 3, **kw: Any) -> galmerge.ImageSet:
    args: dict[str, Any] = dict(images=np.zeros((2, channels, 8, 8), np.float32), labels=[0, 1],
                                ids=np.arange(2), bands=("g", "r", "i"), survey="mine")
    args.update(kw)
    return galmerge.ImageSet(**args)


# ---- 1. one band name per channel -----------------------------------------------------------

@pytest.mark.parametrize("channels, bands, says", [
    (3, ("g", "r"), "ImageSet has 3 channels but 2 bands ('g', 'r'); give one band name per "
                    "channel"),
    (1, ("g", "r"), "ImageSet has 1 channel but 2 bands ('g', 'r')"),
    # a colour image's bands named as one string
    (3, ("gri",), "but 1 band ('gri'); give one band name per channel, e.g. "
                  "bands=('g', 'r', 'i')"),
    # the HDF5 attribute's text given as it is: read letter by letter, commas too
    (3, "g,r,i", "but 5 bands ('g', ',', 'r', ',', 'i'); give one band name per channel, e.g. "
                 "bands=('g', 'r', 'i')"),
    (2, (), "ImageSet has 2 channels but 0 bands (); give one band name per channel, e.g. "
            "bands=('ch0', 'ch1')"),
])
def test_an_imageset_needs_one_band_name_per_channel(channels: int, bands: Any,
                                                     says: str) -> None:
    with pytest.raises(galmerge.GalmergeError) as err:
        _imageset(channels, bands=bands)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_a_lazy_imageset_is_checked_against_its_shape(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["images"] = np.zeros((2, 4, 8, 8), np.float32)
    with h5py.File(tmp_path / "x.h5", "r") as f, \
            pytest.raises(galmerge.GalmergeError, match="4 channels but 3 bands"):
        _imageset(images=f["images"])


def test_imageset_bands_that_are_no_names_are_a_galmerge_error() -> None:
    with pytest.raises(galmerge.GalmergeError, match=r"bands must be one name per channel, "
                                                     r"e\.g\. bands=\('g', 'r', 'i'\); got None"):
        _imageset(bands=None)


def test_one_band_name_per_channel_is_taken_as_plain_strings() -> None:
    imageset = _imageset(1, bands=np.array(["r"]))
    assert imageset.bands == ("r",) and type(imageset.bands[0]) is str
