"""The real DeepMerge data files (Illustris-1 mocks and SDSS) read as `ImageSet`s.

DeepMerge II (Zenodo record 4507941) ships pairs of .npy files, X of shape (N, 3, 75, 75) and y
of N labels; DeepMerge I (MAST HLSP "deepmerge") ships FITS files with the images in HDU0 and
the labels in HDU1. Files live in ``$GALMERGE_DATA/deepmerge/`` and come from
``galmerge fetch illustris|sdss|deepmerge1``.

Label convention: 1 = merger, 0 = non-merger, in both releases. Sources: the DeepMerge II code
(github.com/AleksCipri/DeepMergeDomainAdaptation, ``galaxy_utils.image_classification_test``)
names its softmax columns ["non-merger", "merger"], so class index 1 is a merger; users of the
MAST FITS select mergers with ``np.where(hdul[1].data == 1)``. One-hot label arrays (N, 2) are
read with the same column order.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from galmerge.errors import GalmergeError
from galmerge.io.paths import data_dir
from galmerge.plugin.imageset import ImageSet

ZENODO_RECORD = "4507941"
MAST_HLSP_PATH = "hlsps/deepmerge"
SUBDIR = "deepmerge"
OPTIONS = ("in_memory", "memory_limit_mb", "stretch", "check_finite")
#: images read at once when checking a file for NaN/inf
CHECK_BLOCK = 512

_DM1 = "hlsp_deepmerge_hst-jwst_acs-wfc3-nircam_illustris-z2_f814w-f160w-f356w_v1_sim-{}.fits"
# Channel order of the z=2 mocks follows the MAST file name (f814w-f160w-f356w): HST ACS F814W,
# HST WFC3 F160W and JWST NIRCam F356W.
HST_JWST_BANDS = ("F814W", "F160W", "F356W")
SDSS_BANDS = ("g", "r", "i")


@dataclass(frozen=True)
class DeepMergeSet:
    """One labelled set of the DeepMerge releases and how to read it."""

    survey: str
    key: str
    files: tuple[str, ...]  # (X.npy, y.npy) or (file.fits,)
    bands: tuple[str, ...]
    fetch: str  # the `galmerge fetch` target that downloads it
    offline: str  # the synthetic preset that stands in for it offline
    image_source: str  # "frames" (simulated/calibrated fluxes) or "jpeg" (8-bit colour images)
    description: str


SETS: dict[tuple[str, str], DeepMergeSet] = {
    (s.survey, s.key): s
    for s in (
        DeepMergeSet(
            "illustris",
            "sim-real",
            ("SimReal_SOURCE_X_Illustris0.npy", "SimReal_SOURCE_y_Illustris0.npy"),
            SDSS_BANDS,
            "illustris",
            "synthetic:illustris",
            "frames",
            "Illustris-1 z=0 mocks with dust, PSF and noise mimicking SDSS g,r,i (DeepMerge II)",
        ),
        DeepMergeSet(
            "illustris",
            "pristine",
            ("SimSim_SOURCE_X_Illustris2_pristine.npy", "SimSim_SOURCE_y_Illustris2_pristine.npy"),
            HST_JWST_BANDS,
            "illustris",
            "synthetic:pristine",
            "frames",
            "Illustris-1 z=2 HST/JWST-like mocks with PSF, no noise (DeepMerge II sim-sim source)",
        ),
        DeepMergeSet(
            "illustris",
            "noisy",
            ("SimSim_TARGET_X_Illustris2_noisy.npy", "SimSim_TARGET_y_Illustris2_noisy.npy"),
            HST_JWST_BANDS,
            "illustris",
            "synthetic:noisy",
            "frames",
            "Illustris-1 z=2 HST/JWST-like mocks with PSF and noise (DeepMerge II sim-sim target)",
        ),
        DeepMergeSet(
            "illustris",
            "deepmerge1-pristine",
            (_DM1.format("pristine"),),
            HST_JWST_BANDS,
            "deepmerge1",
            "synthetic:pristine",
            "frames",
            "DeepMerge I z=2 pristine mocks (MAST HLSP FITS)",
        ),
        DeepMergeSet(
            "illustris",
            "deepmerge1-noisy",
            (_DM1.format("noisy"),),
            HST_JWST_BANDS,
            "deepmerge1",
            "synthetic:noisy",
            "frames",
            "DeepMerge I z=2 noisy mocks (MAST HLSP FITS)",
        ),
        DeepMergeSet(
            "sdss",
            "postmergers",
            ("SimReal_TARGET_X_postmergers_SDSS.npy", "SimReal_TARGET_y_postmergers_SDSS.npy"),
            SDSS_BANDS,
            "sdss",
            "synthetic:sdss",
            # Galaxy Zoo SDSS colour images: 0..255 pixel values (the DeepMerge II code measured
            # per-band means of 25.8/21.1/14.3 and stds of 35/30/20 on this set).
            "jpeg",
            "SDSS post-mergers and non-mergers labelled by Galaxy Zoo (DeepMerge II sim-real target)",
        ),
    )
}
DEFAULT_KEY = {"illustris": "sim-real", "sdss": "postmergers"}
ALIASES = {
    "simreal": "sim-real",
    "sim_real": "sim-real",
    "dm1-pristine": "deepmerge1-pristine",
    "dm1-noisy": "deepmerge1-noisy",
}

#: files each `galmerge fetch` target downloads, and from where
FETCH_GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "illustris": (
        "zenodo",
        tuple(f for s in SETS.values() if s.fetch == "illustris" for f in s.files),
    ),
    "sdss": ("zenodo", SETS[("sdss", "postmergers")].files),
    "deepmerge1": (
        "mast",
        tuple(f for s in SETS.values() if s.fetch == "deepmerge1" for f in s.files),
    ),
}


def data_root(override: str | os.PathLike[str] | None = None) -> Path:
    """``$GALMERGE_DATA/deepmerge`` (GALMERGE_DATA defaults to ``./data``)."""
    base = (
        Path(override) if override is not None else data_dir()
    )
    return base.expanduser() / SUBDIR


def find_file(name: str, root: Path | None = None) -> Path | None:
    """The local copy of ``name``; matched case-insensitively (copies spell X/x both ways)."""
    root = data_root() if root is None else root
    exact = root / name
    if exact.is_file():
        return exact
    if root.is_dir():
        for candidate in root.iterdir():
            if candidate.name.lower() == name.lower() and candidate.is_file():
                return candidate
    return None


class ArrayImages:
    """Images of a .npy or FITS file read on demand through a memory map; picklable."""

    def __init__(self, path: Path, kind: str, channels_last: bool) -> None:
        self.path = str(path)
        self.kind = kind
        self.channels_last = channels_last
        self._array: Any = None
        self._pid: int | None = None
        raw = self._raw()
        n, *rest = raw.shape
        self.shape: tuple[int, ...] = (
            (n, rest[2], rest[0], rest[1]) if channels_last else (n, *rest)
        )

    def _raw(self) -> Any:
        if self._array is None or self._pid != os.getpid():
            self._array = _open_array(Path(self.path), self.kind)
            self._pid = os.getpid()
        return self._array

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_array": None, "_pid": None}

    def __len__(self) -> int:
        return int(self.shape[0])

    def __getitem__(self, index: Any) -> np.ndarray:
        block = np.asarray(self._raw()[index])
        if self.channels_last:
            block = np.moveaxis(block, -1, -3)
        return np.ascontiguousarray(block, dtype=np.float32)


def _open_array(path: Path, kind: str) -> Any:
    if kind == "npy":
        return np.load(path, mmap_mode="r", allow_pickle=False)
    from astropy.io import fits

    # memmap keeps huge FITS files on disk; the HDU list must stay open while it is used
    hdul = fits.open(path, memmap=True, lazy_load_hdus=True)
    return hdul[0].data


def _missing(ds: DeepMergeSet, name: str, root: Path) -> GalmergeError:
    return GalmergeError(
        f"{ds.survey}:{ds.key} needs {root / name}, which is missing; run "
        f"`galmerge fetch {ds.fetch}` to download it, or use {ds.offline}, which works offline"
    )


def _read_labels(path: Path, kind: str, n: int, ds: DeepMergeSet) -> np.ndarray:
    where = f"{ds.survey}:{ds.key}: {path.name}"
    try:
        if kind == "npy":
            raw = np.load(path, allow_pickle=False)
        else:
            from astropy.io import fits

            with fits.open(path, memmap=False) as hdul:
                if len(hdul) < 2 or hdul[1].data is None:
                    raise GalmergeError(f"{where}: HDU1 (labels) is missing or empty")
                data = hdul[1].data
                # HDU1 is an image array in the release; a one-column table works too
                raw = np.asarray(data[data.names[0]] if hasattr(data, "names") else data)
    except (OSError, ValueError) as exc:
        raise GalmergeError(f"{where}: cannot read labels ({exc})") from None
    raw = np.asarray(raw)
    if raw.ndim == 2 and raw.shape[1] == 2:  # one-hot, columns [non-merger, merger]
        raw = raw.argmax(axis=1)
    raw = raw.reshape(-1) if raw.ndim == 2 and 1 in raw.shape else raw
    if raw.ndim != 1 or len(raw) != n:
        raise GalmergeError(
            f"{where}: labels have shape {raw.shape}; expected ({n},) to match the images"
        )
    if raw.dtype.kind not in "iufb" or not np.isin(raw, (0, 1)).all():
        bad = raw[~np.isin(raw, (0, 1))][:1] if raw.dtype.kind in "iufb" else raw[:1]
        raise GalmergeError(f"{where}: label value {bad.tolist()} is not 0 or 1")
    return raw.astype(np.int64)


def _check_options(name: str, options: Mapping[str, Any]) -> None:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise GalmergeError(
            f"{name}: unknown option {unknown[0]!r}; valid options: {', '.join(OPTIONS)}"
        )
    stretch = options.get("stretch", "none")
    if stretch not in ("none", "arcsinh"):
        raise GalmergeError(f"{name}: stretch must be none or arcsinh, not {stretch!r}")


def _resolve(survey: str, arg: str | None) -> DeepMergeSet:
    key = (arg or DEFAULT_KEY[survey]).strip().lower()
    key = ALIASES.get(key, key)
    ds = SETS.get((survey, key))
    if ds is None:
        valid = ", ".join(k for (sv, k) in SETS if sv == survey)
        raise GalmergeError(f"{survey}:{arg}: unknown set; choose one of {valid}")
    return ds


def load_set(ds: DeepMergeSet, options: Mapping[str, Any], root: Path | None = None) -> ImageSet:
    """Read one DeepMerge set from ``root`` (default ``$GALMERGE_DATA/deepmerge``)."""
    import torch

    from galmerge.io import hdf5 as hdf5io

    name = f"{ds.survey}:{ds.key}"
    _check_options(name, options)
    root = data_root() if root is None else root
    paths = []
    for file in ds.files:
        found = find_file(file, root)
        if found is None:
            raise _missing(ds, file, root)
        paths.append(found)
    kind = "fits" if paths[0].suffix.lower() in (".fits", ".fit") else "npy"
    try:
        raw = _open_array(paths[0], kind)
    except (OSError, ValueError) as exc:
        raise GalmergeError(
            f"{name}: {paths[0].name} is unreadable ({exc}); run `galmerge fetch {ds.fetch} "
            "--force` to download it again"
        ) from None
    if raw is None or raw.ndim != 4:
        shape = None if raw is None else raw.shape
        raise GalmergeError(f"{name}: {paths[0].name} holds shape {shape}; expected (N, C, H, W)")
    # the releases are channels first; accept channels-last copies people made for Keras
    channels_last = raw.shape[1] > 8 and raw.shape[-1] <= 8
    images = ArrayImages(paths[0], kind, channels_last)
    n, c = images.shape[0], images.shape[1]
    if c != len(ds.bands):
        raise GalmergeError(
            f"{name}: {paths[0].name} has {c} channels; expected {len(ds.bands)} "
            f"({','.join(ds.bands)})"
        )
    if raw.dtype.kind not in "fu":
        raise GalmergeError(f"{name}: {paths[0].name} has dtype {raw.dtype}; expected float")
    labels = _read_labels(paths[-1], kind, n, ds)
    if options.get("check_finite", True) and raw.dtype.kind == "f":
        for start in range(0, n, CHECK_BLOCK):
            block = np.asarray(raw[start : start + CHECK_BLOCK])
            ok = np.isfinite(block).reshape(len(block), -1).all(axis=1)
            if not ok.all():
                first = start + int(np.flatnonzero(~ok)[0])
                raise GalmergeError(
                    f"{name}: {paths[0].name} has non-finite pixels in image {first}; run "
                    f"`galmerge fetch {ds.fetch} --force` or pass ?check_finite=false"
                )
    in_memory = options.get("in_memory")
    if in_memory is None:
        limit_mb = options.get("memory_limit_mb")
        limit = hdf5io.default_memory_limit() if limit_mb is None else int(limit_mb * 1024**2)
        in_memory = int(np.prod(images.shape)) * 4 <= limit
    data: Any = images
    if in_memory:
        array = images[slice(None)]
        if not array.flags.writeable or isinstance(array, np.memmap):
            array = np.array(array)  # own the pixels: the memory map is read-only
        data = torch.from_numpy(array)
    meta: dict[str, Any] = {
        "image_source": ds.image_source,
        "release": "DeepMerge I (MAST HLSP)" if kind == "fits" else "DeepMerge II (Zenodo 4507941)",
        "files": [p.name for p in paths],
    }
    if options.get("stretch", "none") == "arcsinh":
        meta.update(hdf5io.stretch_defaults(hdf5io.sample_images(images)))
    else:
        # the DeepMerge papers standardise raw pixel values per band, without a stretch
        meta["stretch"] = "none"
    return ImageSet(
        images=data,
        labels=torch.as_tensor(labels),
        ids=np.arange(n, dtype=np.int64),
        bands=ds.bands,
        survey=name,
        # the releases do not record a pixel scale with the arrays
        pixel_scale_arcsec=None,
        meta=meta,
    )


def load_illustris(arg: str | None, options: Mapping[str, Any]) -> ImageSet:
    """``illustris[:sim-real|pristine|noisy|deepmerge1-pristine|deepmerge1-noisy]``."""
    return load_set(_resolve("illustris", arg), options)


def load_sdss(arg: str | None, options: Mapping[str, Any]) -> ImageSet:
    """``sdss[:postmergers]``: the DeepMerge II SDSS set (Galaxy Zoo labels, 0..255 colour)."""
    return load_set(_resolve("sdss", arg), options)
