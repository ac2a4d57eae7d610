"""The HDF5 image-set writer/reader: round trips, lazy reading, appends, atomicity, validation."""

from __future__ import annotations

import pickle
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from galmerge.data.datasets import load_imageset
from galmerge.errors import GalmergeError
from galmerge.io import hdf5 as hdf5io
from galmerge.plugin.imageset import ImageSet


def _imageset(n: int = 7, *, string_ids: bool = False, dtype=torch.float32) -> ImageSet:
    gen = torch.Generator().manual_seed(3)
    images = torch.rand(n, 3, 12, 12, generator=gen)
    if dtype == torch.uint8:
        images = (images * 255).to(torch.uint8)
    ids = np.array([f"gal-{i}" for i in range(n)]) if string_ids else np.arange(100, 100 + n)
    return ImageSet(
        images=images,
        labels=torch.tensor([1, 0, -1, 1, 0, 0, 1][:n] + [0] * max(0, n - 7)),
        ids=ids,
        bands=("g", "r", "i"),
        survey="synthetic:sdss",
        pixel_scale_arcsec=0.396,
        ra=np.linspace(150.0, 151.0, n),
        dec=np.linspace(2.0, 2.5, n),
        meta={"stretch": "arcsinh", "stretch_scale": np.float32(0.25), "image_source": "frames"},
    )


@pytest.mark.parametrize("string_ids", [False, True])
def test_round_trip_keeps_everything(tmp_path, string_ids):
    original = _imageset(string_ids=string_ids)
    path = tmp_path / "set.h5"
    hdf5io.write_imageset(path, original, compression="gzip")
    back = hdf5io.read_imageset(path)
    assert back.in_memory
    assert torch.equal(back.images, original.images)
    assert torch.equal(back.labels, original.labels)
    assert list(back.ids) == list(original.ids)
    np.testing.assert_array_equal(back.ra, original.ra)
    np.testing.assert_array_equal(back.dec, original.dec)
    assert back.bands == ("g", "r", "i")
    assert back.survey == "synthetic:sdss"
    assert back.pixel_scale_arcsec == pytest.approx(0.396)
    assert back.stretch == "arcsinh"
    assert back.stretch_scale == pytest.approx(0.25)
    with h5py.File(path) as f:  # the DESIGN.md schema, read by plain h5py
        assert f["images"].dtype == np.float32
        assert f["images"].chunks == (1, 3, 12, 12)
        assert f.attrs["bands"] == "g,r,i"
        assert f["ra"].dtype == np.float64
        assert (f["id"].dtype == np.int64) != string_ids


def test_uint8_images_stay_uint8_on_disk(tmp_path):
    original = _imageset(dtype=torch.uint8)
    path = tmp_path / "jpeg.h5"
    hdf5io.write_imageset(path, original)
    with h5py.File(path) as f:
        assert f["images"].dtype == np.uint8
    back = hdf5io.read_imageset(path)
    assert back.images.dtype == torch.float32
    assert torch.equal(back.images, original.images.float())
    assert back.storage_dtype == "uint8"


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_lazy_reader_matches_memory_and_pickles(tmp_path, compression):
    original = _imageset(n=20)
    path = tmp_path / "big.h5"
    hdf5io.write_imageset(path, original, compression=compression)
    lazy = hdf5io.read_imageset(path, in_memory=None, memory_limit=0)
    assert not lazy.in_memory
    assert isinstance(lazy.images, hdf5io.H5Images)
    order = np.array([17, 3, 3, 0, 9, 10, 11])
    assert torch.equal(lazy.batch(order), original.images[torch.as_tensor(order)])
    assert torch.equal(lazy.subset([5, 1]).images, original.images[[5, 1]])
    clone = pickle.loads(pickle.dumps(lazy.images))
    np.testing.assert_array_equal(clone[np.array([2, 4])], original.images[[2, 4]].numpy())
    if compression is not None:
        return
    # a fresh process reopens the file from the pickled reader
    code = (
        "import pickle,sys,numpy as np;r=pickle.loads(sys.stdin.buffer.read());"
        "print(float(r[np.array([1,2])].sum()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], input=pickle.dumps(lazy.images), capture_output=True
    )
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) == pytest.approx(float(original.images[[1, 2]].sum()), rel=1e-5)


def test_writer_appends_across_reopen_and_backfills_positions(tmp_path):
    path = tmp_path / "cache.h5"
    block = np.ones((3, 3, 8, 8), np.float32)
    with hdf5io.ImageSetWriter(path, bands="gri", survey="sdss", pixel_scale_arcsec=0.396) as w:
        w.append(block, ids=["a", "b", "c"])
        assert len(w) == 3
    with hdf5io.ImageSetWriter(path) as w:
        w.append(2 * block[:2], ids=["d", "e"], ra=[10.0, 11.0], dec=[-1.0, -2.0], labels=[1, 0])
    back = hdf5io.read_imageset(path)
    assert len(back) == 5
    assert list(back.ids) == ["a", "b", "c", "d", "e"]
    assert back.labels.tolist() == [-1, -1, -1, 1, 0]
    assert np.isnan(back.ra[:3]).all() and back.ra[3:].tolist() == [10.0, 11.0]
    assert float(back.images[4].mean()) == 2.0


class _FailingImages:
    """Lazy images whose second block cannot be read (a disk error mid-copy)."""

    shape = (600, 3, 8, 8)

    def __len__(self) -> int:
        return 600

    def __getitem__(self, index):
        if int(np.max(index)) >= hdf5io.BLOCK_IMAGES:
            raise OSError("read error")
        return np.zeros((len(index), 3, 8, 8), np.float32)


def test_failed_write_leaves_previous_file_and_no_temp(tmp_path):
    path = tmp_path / "set.h5"
    hdf5io.write_imageset(path, _imageset())
    before = path.read_bytes()
    broken = ImageSet(
        images=_FailingImages(),
        labels=torch.zeros(600),
        ids=np.arange(600),
        bands=("g", "r", "i"),
        survey="x",
    )
    with pytest.raises(OSError):
        hdf5io.write_imageset(path, broken)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set.h5"]


def _write_raw(path, **datasets):
    attrs = datasets.pop("attrs", {"bands": "g,r,i"})
    with h5py.File(path, "w") as f:
        for name, value in datasets.items():
            f.create_dataset(name, data=value)
        f.attrs.update(attrs)


GOOD = np.zeros((4, 3, 10, 10), np.float32)
NAN_IMAGE = GOOD.copy()
NAN_IMAGE[2, 1, 5, 5] = np.nan


@pytest.mark.parametrize(
    ("datasets", "expected"),
    [
        ({"labels": np.zeros(4, np.int8)}, "needs a dataset 'images'"),
        ({"images": GOOD[:, 0]}, "dataset 'images' has shape (4, 10, 10)"),
        ({"images": GOOD.astype(np.int16)}, "dataset 'images' has dtype int16"),
        ({"images": GOOD, "labels": np.zeros(3)}, "dataset 'labels' has shape (3,)"),
        ({"images": GOOD, "labels": np.array([0, 1, 2, 0])}, "dataset 'labels' has value 2"),
        ({"images": NAN_IMAGE}, "non-finite pixels (NaN/inf) in image 2"),
        ({"images": GOOD, "attrs": {"bands": "g,r"}}, "has 3 channels but attribute 'bands'"),
        ({"images": GOOD, "ra": np.zeros(5)}, "dataset 'ra' has shape (5,)"),
    ],
)
def test_bad_files_give_one_line_naming_the_dataset(tmp_path, datasets, expected):
    path = tmp_path / "bad.h5"
    _write_raw(path, **datasets)
    with pytest.raises(GalmergeError) as info:
        load_imageset(f"hdf5:{path}")
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    assert str(path) in message


def test_not_an_hdf5_file(tmp_path):
    path = tmp_path / "images.h5"
    path.write_text("id,ra,dec\n1,2,3\n")
    with pytest.raises(GalmergeError, match="not an HDF5 file"):
        hdf5io.validate_imageset_file(path)


def test_good_raw_file_without_optional_parts_loads(tmp_path):
    path = tmp_path / "plain.h5"
    _write_raw(path, images=GOOD + 1.0, attrs={})
    s = load_imageset(f"hdf5:{path}")
    assert len(s) == 4 and s.labels.tolist() == [-1] * 4
    assert s.ids.tolist() == [0, 1, 2, 3]
    assert s.bands == ("ch0", "ch1", "ch2")


def test_uint8_writer_refuses_values_it_cannot_hold(tmp_path):
    with hdf5io.ImageSetWriter(tmp_path / "u8.h5", dtype="uint8") as writer:
        writer.append(np.full((1, 3, 4, 4), 254.6, np.float32))
        with pytest.raises(ValueError, match="0..255"):
            writer.append(np.full((1, 3, 4, 4), 300.0, np.float32))
    back = hdf5io.read_imageset(tmp_path / "u8.h5")
    assert len(back) == 1 and float(back.images.max()) == 255.0
