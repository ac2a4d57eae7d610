"""The `hdf5:PATH` survey: option handling, stretch metadata, chunked reading of big files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from galmerge.data.datasets import load_imageset
from galmerge.errors import GalmergeError
from galmerge.io import hdf5 as hdf5io
from galmerge.plugin.imageset import ImageSet


def _write(path, images, **meta):
    s = ImageSet(
        images=images,
        labels=torch.zeros(len(images), dtype=torch.int64),
        ids=np.arange(len(images)),
        bands=("g", "r", "i"),
        survey="test",
        meta=meta,
    )
    hdf5io.write_imageset(path, s)
    return s


def test_survey_is_registered(plugin_manager):
    assert plugin_manager.get("surveys", "hdf5").load is not None


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("hdf5", "use hdf5:PATH"),
        ("hdf5:/nonexistent/where.h5", "no such file"),
    ],
)
def test_missing_path_is_one_line_with_fix(spec, expected):
    with pytest.raises(GalmergeError, match=expected) as info:
        load_imageset(spec)
    assert "\n" not in str(info.value)


def test_unknown_option_is_rejected(tmp_path):
    path = tmp_path / "s.h5"
    _write(path, torch.zeros(2, 3, 8, 8))
    with pytest.raises(GalmergeError, match="unknown option 'in_memroy'"):
        load_imageset(f"hdf5:{path}?in_memroy=false")


def test_float_images_get_noise_based_arcsinh(tmp_path):
    gen = torch.Generator().manual_seed(0)
    sigma = 0.05
    images = sigma * torch.randn(40, 3, 32, 32, generator=gen)
    images[:, :, 12:20, 12:20] += 5.0  # a bright galaxy in the middle, noise at the border
    path = tmp_path / "noisy.h5"
    _write(path, images)
    s = load_imageset(f"hdf5:{path}")
    assert s.stretch == "arcsinh"
    assert s.stretch_scale == pytest.approx(sigma, rel=0.1)


def test_noise_free_images_still_get_a_positive_scale(tmp_path):
    images = torch.zeros(5, 3, 16, 16)
    images[:, :, 6:10, 6:10] = 100.0
    path = tmp_path / "pristine.h5"
    _write(path, images)
    s = load_imageset(f"hdf5:{path}")
    assert s.stretch == "arcsinh" and 0 < s.stretch_scale <= 1.0


def test_uint8_images_are_not_stretched(tmp_path):
    path = tmp_path / "jpeg.h5"
    _write(path, torch.randint(0, 255, (4, 3, 16, 16), dtype=torch.uint8))
    assert load_imageset(f"hdf5:{path}").stretch == "none"


def test_declared_stretch_wins(tmp_path):
    path = tmp_path / "declared.h5"
    _write(path, torch.rand(3, 3, 8, 8))
    with h5py.File(path, "a") as f:
        del f.attrs[hdf5io.META_ATTR]
        f.attrs["stretch"] = "none"
    assert load_imageset(f"hdf5:{path}").stretch == "none"


def test_memory_limit_gives_lazy_set_read_in_chunks(tmp_path):
    original = _write(tmp_path / "big.h5", torch.rand(50, 3, 16, 16))
    lazy = load_imageset(f"hdf5:{tmp_path / 'big.h5'}?memory_limit_mb=0")
    assert not lazy.in_memory
    eager = load_imageset(f"hdf5:{tmp_path / 'big.h5'}?in_memory=true&memory_limit_mb=0")
    assert eager.in_memory
    perm = np.random.default_rng(0).permutation(50)
    for start in range(0, 50, 16):  # how a trainer walks a shuffled epoch
        idx = perm[start : start + 16]
        assert torch.equal(lazy.batch(idx), original.images[torch.as_tensor(idx)])


def test_check_finite_can_be_skipped_for_huge_files(tmp_path):
    images = torch.rand(3, 3, 8, 8)
    images[1, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.h5"
    _write(path, images)
    with pytest.raises(GalmergeError, match="non-finite pixels"):
        load_imageset(f"hdf5:{path}")
    assert len(load_imageset(f"hdf5:{path}?check_finite=false")) == 3


def _external_raw(path, other):
    """An 'images' dataset whose bytes are another file's (HDF5 external storage)."""
    np.zeros((2, 3, 8, 8), np.float32).tofile(other)
    with h5py.File(path, "w") as f:
        f.create_dataset("images", shape=(2, 3, 8, 8), dtype="f4", external=[(str(other), 0,
                                                                               h5py.h5f.UNLIMITED)])


def _virtual(path, other):
    _write(other, torch.zeros(2, 3, 8, 8))
    layout = h5py.VirtualLayout(shape=(2, 3, 8, 8), dtype="f4")
    layout[:] = h5py.VirtualSource(str(other), "images", shape=(2, 3, 8, 8))
    with h5py.File(path, "w") as f:
        f.create_virtual_dataset("images", layout)


def _external_link(path, other):
    _write(other, torch.zeros(2, 3, 8, 8))
    with h5py.File(path, "w") as f:
        f["images"] = h5py.ExternalLink(str(other), "images")


def _dangling_link(path, other):
    with h5py.File(path, "w") as f:
        f["images"] = h5py.ExternalLink(str(other), "images")


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (_external_raw, "is external storage in"),
        (_virtual, "is a virtual dataset"),
        (_external_link, "is an external link to"),
        (_dangling_link, "is an external link to"),
    ],
)
def test_pixels_stored_in_another_file_are_refused(tmp_path, make, expected):
    # HDF5 follows these on read, so a file someone shares could make galmerge read any file
    # the user can (e.g. /etc/..., ~/.ssh/...) as pixels, labels or ids
    path, other = tmp_path / "shared.h5", tmp_path / "elsewhere.bin"
    make(path, other)
    with pytest.raises(GalmergeError, match=expected) as info:
        load_imageset(f"hdf5:{path}")
    assert "\n" not in str(info.value) and "stored in the file itself" in str(info.value)


def test_labels_in_external_storage_are_refused(tmp_path):
    path, other = tmp_path / "shared.h5", tmp_path / "labels.bin"
    _write(path, torch.zeros(2, 3, 8, 8))
    np.zeros(2, np.int64).tofile(other)
    with h5py.File(path, "a") as f:
        del f["labels"]
        f.create_dataset("labels", shape=(2,), dtype="i8", external=[(str(other), 0, 16)])
    with pytest.raises(GalmergeError, match="dataset 'labels' is external storage"):
        load_imageset(f"hdf5:{path}")


def test_a_run_records_the_content_hash_of_its_hdf5_files(tmp_path):
    # a path names whatever the file holds today: env.json must say which bytes were trained on
    from eval_helpers import tiny_run, write_pair

    source, target = write_pair(tmp_path / "data", n=24)
    tiny_run(tmp_path / "run", source, target, epochs=1, max_steps_per_epoch=1)
    data = json.loads((tmp_path / "run" / "env.json").read_text())["data"]
    for role, spec in (("source", source), ("target", target)):
        path = Path(spec.removeprefix("hdf5:"))
        assert data[role]["meta"]["file_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert data[role]["meta"]["file"] == str(path.resolve())
    with h5py.File(path, "a") as f:  # the same path, other pixels: another hash
        f["images"][0] += 1.0
    assert load_imageset(target).meta["file_sha256"] != data["target"]["meta"]["file_sha256"]


def test_links_and_virtual_datasets_within_the_file_are_read(tmp_path):
    # only data in another file is refused: a soft link to a dataset of the same file, or a
    # virtual dataset mapped from the file itself, is the file's own data
    path = tmp_path / "own.h5"
    _write(path, torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8))
    with h5py.File(path, "a") as f:
        f.move("images", "data/pixels")
        f["images"] = h5py.SoftLink("/data/pixels")
    assert load_imageset(f"hdf5:{path}").images.shape == (2, 3, 8, 8)
    with h5py.File(path, "a") as f:
        del f["images"]
        layout = h5py.VirtualLayout(shape=(2, 3, 8, 8), dtype="f4")
        layout[:] = h5py.VirtualSource(".", "data/pixels", shape=(2, 3, 8, 8))
        f.create_virtual_dataset("images", layout)
    assert load_imageset(f"hdf5:{path}").images.shape == (2, 3, 8, 8)


def test_a_soft_link_through_a_group_in_another_file_is_refused(tmp_path):
    other, path = tmp_path / "elsewhere.h5", tmp_path / "shared.h5"
    _write(other, torch.zeros(2, 3, 8, 8))
    with h5py.File(path, "w") as f:
        f["grp"] = h5py.ExternalLink(str(other), "/")
        f["images"] = h5py.SoftLink("/grp/images")
    with pytest.raises(GalmergeError, match="is a link to data in .*elsewhere.h5"):
        load_imageset(f"hdf5:{path}")


def test_a_file_is_hashed_once_per_process_until_it_changes(tmp_path, monkeypatch):
    from galmerge.io import provenance

    path = tmp_path / "s.h5"
    _write(path, torch.zeros(2, 3, 8, 8))
    calls = []
    real = provenance.sha256_file
    monkeypatch.setattr(provenance, "sha256_file", lambda p: calls.append(p) or real(p))
    first = load_imageset(f"hdf5:{path}").meta["file_sha256"]
    assert load_imageset(f"hdf5:{path}").meta["file_sha256"] == first and len(calls) == 1
    with h5py.File(path, "a") as f:
        f["images"][0] += 1.0
    assert load_imageset(f"hdf5:{path}").meta["file_sha256"] != first and len(calls) == 2


@pytest.mark.parametrize(("value", "scans"), [("0", False), ("1", True), ("false", False),
                                              ("true", True), ("FALSE", False)])
def test_check_finite_takes_0_and_1_as_false_and_true(tmp_path, value, scans):
    """A spec's ?check_finite=0 reached the bool option as the int 0 and was refused as "must
    be bool", while the string "0" of a --set was taken: every bool option of a spec takes
    true/false and 1/0 alike."""
    images = torch.rand(3, 3, 8, 8)
    images[1, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.h5"
    _write(path, images)
    if scans:
        with pytest.raises(GalmergeError, match="non-finite pixels"):
            load_imageset(f"hdf5:{path}?check_finite={value}")
    else:
        assert len(load_imageset(f"hdf5:{path}?check_finite={value}")) == 3


@pytest.mark.parametrize("value", ["2", "-1", "0.0", "no", "yes"])
def test_other_values_of_a_bool_option_say_use_true_or_false(tmp_path, value):
    path = tmp_path / "ok.h5"
    _write(path, torch.rand(3, 3, 8, 8))
    with pytest.raises(GalmergeError) as info:
        load_imageset(f"hdf5:{path}?check_finite={value}")
    text = str(info.value)
    assert "option 'check_finite'" in text and "must be bool" in text
    assert "use true or false" in text and "\n" not in text
