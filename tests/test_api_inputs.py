"""Input checks of the Python API: an ImageSet's band names against its channels (in memory and
in an HDF5 file).

Each mistake is one GalmergeError naming the thing and the fix, before any work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import galmerge
from galmerge.io import hdf5 as hdf5io


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


# ---- 2. an HDF5 file's bands attribute -------------------------------------------------------

def _file(path: Path, bands: Any, channels: int = 3) -> Path:
    """An image file as h5py (or an older galmerge) writes it, with this ``bands`` attribute."""
    with h5py.File(path, "w") as f:
        f["images"] = np.zeros((4, channels, 8, 8), np.float32)
        f["labels"] = np.array([0, 1, 0, 1], np.int8)
        if bands is not None:
            f.attrs["bands"] = bands
    return path


@pytest.mark.parametrize("bands, fix", [
    ("g,r", "attrs['bands'] = 'ch0,ch1,ch2'"),
    ("gri", "attrs['bands'] = 'g,r,i'"),  # one name for three channels: the fix splits it
])
def test_a_file_whose_bands_disagree_with_its_channels_names_the_file_and_the_fix(
        tmp_path: Path, bands: str, fix: str) -> None:
    path = _file(tmp_path / "old.h5", bands)
    with pytest.raises(galmerge.GalmergeError) as err:
        galmerge.load_imageset(f"hdf5:{path}")
    message = str(err.value)
    assert message.startswith(f"{path}: dataset 'images' has 3 channels but attribute 'bands'")
    assert fix in message and "or delete the attribute" in message and "\n" not in message


def test_an_empty_bands_attribute_declares_no_names(tmp_path: Path) -> None:
    """What galmerge wrote for an ImageSet without band names: the file loads, its channels
    named as in a file without the attribute."""
    path = _file(tmp_path / "unnamed.h5", "")
    assert galmerge.load_imageset(f"hdf5:{path}").bands == ("ch0", "ch1", "ch2")
    hdf5io.validate_imageset_file(path)


def test_the_writer_refuses_bands_that_disagree_with_the_images(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 bands .* 3 channels"), \
            hdf5io.ImageSetWriter(tmp_path / "w.h5", bands=("g", "r")) as writer:
        writer.append(np.zeros((1, 3, 8, 8), np.float32))
