"""The one HDF5 writer/reader for image sets (the DESIGN.md schema), used by every cache.

Schema: ``images`` (N, C, H, W) float32 or uint8, chunked one image per chunk; ``labels`` int8
(1 merger, 0 non-merger, -1 unknown); optional ``ra``/``dec`` float64 and ``id`` (int64 or
UTF-8); file attributes ``bands`` ("g,r,i"), ``pixel_scale_arcsec``, ``survey`` and
``galmerge_meta`` (JSON of `ImageSet.meta`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from galmerge.errors import GalmergeError
from galmerge.io import atomic
from galmerge.plugin.imageset import ImageSet, guess_band_names

META_ATTR = "galmerge_meta"
#: images read per block when checking or copying a file (bounded memory for huge files)
BLOCK_IMAGES = 256
#: by default a file loads into memory when its float32 images take under this share of RAM
MEMORY_SHARE = 0.25


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def _as_numpy(images: Any) -> np.ndarray:
    """A block of images as numpy without copying tensors that are already on the CPU."""
    if hasattr(images, "detach"):
        return images.detach().cpu().numpy()
    return np.asarray(images)


class ImageSetWriter:
    """Appends image blocks to an HDF5 file in the schema; creates the file on first append.

    Opening an existing file appends to it (a cutout cache grows across runs). ``flush()``
    makes what was appended so far durable; ``close()`` flushes and closes.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        bands: Sequence[str] | None = None,
        survey: str | None = None,
        pixel_scale_arcsec: float | None = None,
        meta: dict[str, Any] | None = None,
        dtype: str | np.dtype | None = None,
        compression: str | None = None,
    ) -> None:
        self.path = Path(path)
        self._bands = None if bands is None else tuple(bands)
        self._survey = survey
        self._pixel_scale = pixel_scale_arcsec
        self._meta = meta
        self._dtype = None if dtype is None else np.dtype(dtype)
        self._compression = compression
        # an empty file is a fresh temporary (atomic.temp_beside): create the HDF5 file in it
        empty = self.path.is_file() and self.path.stat().st_size == 0
        self._file = h5py.File(self.path, "w" if empty else "a")
        self._write_attrs()

    # -- context manager -------------------------------------------------------------------
    def __enter__(self) -> ImageSetWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self._file["images"].shape[0]) if "images" in self._file else 0

    def _write_attrs(self) -> None:
        attrs = self._file.attrs
        if self._bands is not None:
            attrs["bands"] = ",".join(self._bands)
        if self._survey is not None:
            attrs["survey"] = self._survey
        if self._pixel_scale is not None:
            attrs["pixel_scale_arcsec"] = float(self._pixel_scale)
        if self._meta is not None:
            attrs[META_ATTR] = json.dumps(self._meta, default=_json_default, sort_keys=True)

    def _create(self, images: np.ndarray, ids: np.ndarray | None) -> None:
        _, c, h, w = images.shape
        if self._bands and len(self._bands) != c:  # else a file the reader refuses
            raise ValueError(f"{len(self._bands)} bands ({','.join(self._bands)}) for images of "
                             f"{c} channels; give one band name per channel")
        if self._dtype is not None:
            dtype = self._dtype
        else:
            dtype = np.dtype(np.uint8) if images.dtype == np.uint8 else np.dtype(np.float32)
        if dtype not in (np.dtype(np.float32), np.dtype(np.uint8)):
            raise ValueError(f"images dtype must be float32 or uint8, not {dtype}")
        f = self._file
        f.create_dataset(
            "images",
            shape=(0, c, h, w),
            maxshape=(None, c, h, w),
            dtype=dtype,
            chunks=(1, c, h, w),
            compression=self._compression,
        )
        f.create_dataset("labels", shape=(0,), maxshape=(None,), dtype=np.int8, chunks=(4096,))
        if ids is not None and ids.dtype.kind in "USO":
            id_dtype: Any = h5py.string_dtype("utf-8")
        else:
            id_dtype = np.int64
        f.create_dataset("id", shape=(0,), maxshape=(None,), dtype=id_dtype, chunks=(4096,))

    def _ensure_coord(self, name: str, n_before: int) -> h5py.Dataset:
        if name not in self._file:
            self._file.create_dataset(
                name,
                data=np.full(n_before, np.nan),
                maxshape=(None,),
                dtype=np.float64,
                chunks=(4096,),
            )
        return self._file[name]

    def append(
        self,
        images: Any,
        ids: Sequence[Any] | np.ndarray | None = None,
        ra: Sequence[float] | np.ndarray | None = None,
        dec: Sequence[float] | np.ndarray | None = None,
        labels: Sequence[int] | np.ndarray | Any | None = None,
    ) -> None:
        """Append images (n, C, H, W) with optional ids, positions and labels (-1 if absent)."""
        block = _as_numpy(images)
        if block.ndim == 3:
            block = block[None]
        if block.ndim != 4:
            raise ValueError(f"images must be (n, C, H, W), got shape {block.shape}")
        n = block.shape[0]
        id_arr = None if ids is None else np.asarray(ids)
        if "images" not in self._file:
            self._create(block, id_arr)
        f = self._file
        dset = f["images"]
        if block.shape[1:] != dset.shape[1:]:
            raise ValueError(f"image shape {block.shape[1:]} != file's {dset.shape[1:]}")
        start = dset.shape[0]
        if id_arr is None:
            id_arr = np.arange(start, start + n, dtype=np.int64)
            if f["id"].dtype.kind == "O":
                id_arr = id_arr.astype(str)
        lab = np.full(n, -1, dtype=np.int8) if labels is None else _as_numpy(labels)
        for name, arr in (("id", id_arr), ("labels", lab)):
            if len(arr) != n:
                raise ValueError(f"{name} has {len(arr)} entries for {n} images")
        if dset.dtype == np.uint8 and block.dtype != np.uint8:
            if block.size and (np.nanmin(block) < 0 or np.nanmax(block) > 255):
                raise ValueError("uint8 images need values in 0..255; store float32 instead")
            block = np.rint(block)
        dset.resize(start + n, axis=0)
        dset[start:] = block.astype(dset.dtype, copy=False)
        f["labels"].resize(start + n, axis=0)
        f["labels"][start:] = np.asarray(lab, dtype=np.int8)
        f["id"].resize(start + n, axis=0)
        f["id"][start:] = id_arr.astype(str) if f["id"].dtype.kind == "O" else id_arr
        for name, values in (("ra", ra), ("dec", dec)):
            if values is None and name not in f:
                continue
            coord = self._ensure_coord(name, start)
            coord.resize(start + n, axis=0)
            coord[start:] = np.full(n, np.nan) if values is None else np.asarray(values, float)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if self._file.id.valid:
            self._file.flush()
            self._file.close()


def write_imageset(
    path: str | os.PathLike[str],
    imageset: ImageSet,
    *,
    compression: str | None = None,
    dtype: str | np.dtype | None = None,
) -> None:
    """Write ``imageset`` to ``path`` atomically (temp file in the same folder, then rename).

    Images keep uint8 when the tensor is uint8, else float32; ``dtype`` forces one of the two.
    Lazy (on-disk) sets are copied block by block.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic.temp_beside(path)
    try:
        with ImageSetWriter(
            tmp,
            bands=imageset.bands,
            survey=imageset.survey,
            pixel_scale_arcsec=imageset.pixel_scale_arcsec,
            meta=imageset.stored_meta(),
            dtype=dtype,
            compression=compression,
        ) as writer:
            n = len(imageset)
            labels = imageset.labels.numpy()
            for start in range(0, max(n, 1), BLOCK_IMAGES):
                stop = min(start + BLOCK_IMAGES, n)
                if stop <= start:
                    break
                idx = np.arange(start, stop)
                block = (
                    imageset.images[start:stop]
                    if imageset.in_memory
                    else np.asarray(imageset.images[idx])
                )
                writer.append(
                    block,
                    ids=imageset.ids[start:stop],
                    ra=None if imageset.ra is None else imageset.ra[start:stop],
                    dec=None if imageset.dec is None else imageset.dec[start:stop],
                    labels=labels[start:stop],
                )
            if n == 0:
                c, h, w = (tuple(imageset.images.shape[1:]) + (0, 0, 0))[:3]
                writer._create(np.zeros((0, c, h, w), np.float32), imageset.ids)
        atomic.publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class H5Images:
    """Images of an HDF5 file read on demand; picklable (each process reopens the file)."""

    def __init__(self, path: str | os.PathLike[str], dataset: str = "images") -> None:
        self.path = str(path)
        self.dataset = dataset
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._raw_ok: bool | None = None
        with h5py.File(self.path, "r") as f:
            self.shape: tuple[int, ...] = tuple(f[dataset].shape)
            self.dtype = f[dataset].dtype

    def _dset(self) -> h5py.Dataset:
        if self._file is None or self._pid != os.getpid():
            # a handle inherited through fork is not safe to share: reopen in this process
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file[self.dataset]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        return state

    def __len__(self) -> int:
        return int(self.shape[0])

    def __getitem__(self, index: Any) -> np.ndarray:
        dset = self._dset()
        if isinstance(index, (int, np.integer, slice)):
            return dset[index]
        idx = np.asarray(index, dtype=np.int64)
        if idx.ndim != 1:
            raise IndexError("H5Images takes a 1-D integer index")
        if len(idx) == 0:
            return np.empty((0, *self.shape[1:]), dtype=self.dtype)
        uniq, inverse = np.unique(idx, return_inverse=True)
        if uniq[0] < 0 or uniq[-1] >= self.shape[0]:
            raise IndexError(f"index out of range for {self.shape[0]} images")
        out = np.empty((len(uniq), *self.shape[1:]), dtype=self.dtype)
        if not self._read_raw_chunks(dset, uniq, out):
            # contiguous runs are read as slices: far faster than h5py's point selection
            breaks = np.flatnonzero(np.diff(uniq) != 1) + 1
            pos = 0
            for run in np.split(uniq, breaks):
                out[pos : pos + len(run)] = dset[int(run[0]) : int(run[-1]) + 1]
                pos += len(run)
        return out if len(uniq) == len(idx) and np.all(uniq == idx) else out[inverse]

    def _read_raw_chunks(self, dset: h5py.Dataset, uniq: np.ndarray, out: np.ndarray) -> bool:
        """Copy whole one-image chunks straight from the file when they are stored unfiltered.

        This skips HDF5's selection machinery (about 2x faster for shuffled batches); any
        other layout (compression, several images per chunk) takes the slice path.
        """
        if self._raw_ok is None:
            self._raw_ok = (
                dset.chunks == (1, *self.shape[1:])
                and dset.compression is None
                and not dset.shuffle
                and not dset.fletcher32
                and dset.scaleoffset is None
                and dset.dtype.isnative
            )
        if not self._raw_ok:
            return False
        tail = (0,) * (len(self.shape) - 1)
        read = dset.id.read_direct_chunk
        try:
            for pos, i in enumerate(uniq.tolist()):
                out[pos] = np.frombuffer(read((i, *tail))[1], dtype=self.dtype).reshape(
                    self.shape[1:]
                )
        except (KeyError, OSError, ValueError):  # e.g. a chunk never written
            self._raw_ok = False
            return False
        return True

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __repr__(self) -> str:
        return f"H5Images({self.path!r}, shape={self.shape}, dtype={self.dtype})"


def _available_memory() -> int:
    from galmerge.runtime.devices import available_memory

    return available_memory() or 2 * 1024**3  # unknown: assume a small machine


def default_memory_limit() -> int:
    """Bytes of float32 images that may be loaded into memory (25% of available RAM)."""
    return int(_available_memory() * MEMORY_SHARE)


def check_stored_here(f: h5py.File, name: str, path: str | os.PathLike[str]) -> None:
    """Refuse a dataset whose data lives in another file: reached through an external link
    (directly, or via soft links or groups), stored as external raw files, or a virtual dataset
    mapped from other files. HDF5 follows these silently, so a shared file could make galmerge
    read any file the user can read (absolute paths included) as its data. Soft links and
    virtual datasets within the file are fine."""
    link = f.get(name, getlink=True)
    dset = f.get(name)  # None for a dangling link
    where = None
    if isinstance(link, h5py.ExternalLink):
        where = f"an external link to {link.filename}"
    elif isinstance(dset, h5py.Dataset):
        home = dset.file.filename  # the file the object was found in, after every link
        if os.path.realpath(home) != os.path.realpath(f.filename):
            where = f"a link to data in {home}"
        elif dset.external:
            where = f"external storage in {os.fsdecode(dset.external[0][0])}"
        elif dset.is_virtual and any(src.file_name != "." for src in dset.virtual_sources()):
            where = "a virtual dataset mapped from other files"
    if where is not None:
        raise GalmergeError(
            f"{path}: dataset '{name}' is {where}; galmerge reads only data stored in the file "
            "itself (copy it in, e.g. with h5py or h5repack)"
        )


def _fail(path: Path, message: str) -> GalmergeError:
    return GalmergeError(f"{path}: {message}")


def validate_imageset_file(path: str | os.PathLike[str], *, check_finite: bool = True) -> None:
    """Check a file against the schema; raise a one-line GalmergeError naming what is wrong.

    Pixels are checked for NaN/inf block by block, so huge files use bounded memory.
    """
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "no such file; check the path after 'hdf5:'")
    if not h5py.is_hdf5(path):
        raise _fail(path, "not an HDF5 file; write one with galmerge.io.hdf5.write_imageset")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise _fail(path, f"cannot open as HDF5 ({exc})") from None
    with f:
        for name in ("images", "labels", "ra", "dec", "id"):
            if name in f or isinstance(f.get(name, getlink=True), h5py.ExternalLink):
                check_stored_here(f, name, path)
        if "images" not in f or not isinstance(f["images"], h5py.Dataset):
            found = ", ".join(f"{k} ({'dataset' if isinstance(f[k], h5py.Dataset) else 'group'})"
                              for k in sorted(f.keys())) or "nothing"
            raise _fail(path, f"needs a dataset 'images' (N, C, H, W) at the top level (found: "
                              f"{found}); see DESIGN schema")
        images = f["images"]
        if images.ndim != 4:
            raise _fail(path, f"dataset 'images' has shape {images.shape}; expected (N, C, H, W)")
        n, c, h, w = images.shape
        if n == 0 or c == 0 or h == 0 or w == 0:
            raise _fail(path, f"dataset 'images' is empty (shape {images.shape})")
        if w <= 4 < c and c == h:
            raise _fail(path, f"dataset 'images' has shape {images.shape}, which looks "
                              f"channels-last (N, H, W, C); store it as (N, C, H, W), e.g. "
                              f"numpy.moveaxis(images, -1, 1)")
        if h != w:
            raise _fail(path, f"dataset 'images' holds {h}x{w}-pixel images; galmerge needs "
                              f"square stamps (N, C, H, H): cut them square")
        kind = images.dtype.kind
        if not (kind == "f" or images.dtype == np.uint8):
            raise _fail(
                path, f"dataset 'images' has dtype {images.dtype}; expected float32 or uint8"
            )
        declared_bands(f, path)
        if "labels" in f:
            labels = f["labels"]
            if labels.shape != (n,):
                raise _fail(
                    path,
                    f"dataset 'labels' has shape {labels.shape}; expected ({n},) for {n} images",
                )
            values = labels[()]
            if values.dtype.kind not in "iufb":
                raise _fail(path, f"dataset 'labels' has dtype {values.dtype}; expected int")
            bad = ~np.isin(values, (-1, 0, 1))
            if bad.any():
                first = int(np.flatnonzero(bad)[0])
                raise _fail(
                    path,
                    f"dataset 'labels' has value {values[first].item()!r} at row {first}; "
                    "expected 1 merger, 0 non-merger or -1 unknown",
                )
        for name in ("ra", "dec", "id"):
            if name in f and f[name].shape != (n,):
                raise _fail(path, f"dataset '{name}' has shape {f[name].shape}; expected ({n},)")
        if ("ra" in f) != ("dec" in f):  # positions are pairs: one alone is no position
            have, lack = ("ra", "dec") if "ra" in f else ("dec", "ra")
            raise _fail(path, f"has dataset '{have}' but no '{lack}'; an image file needs both "
                              f"'ra' and 'dec' or neither: add '{lack}' or remove '{have}'")
        if check_finite and kind == "f":
            for start in range(0, n, BLOCK_IMAGES):
                block = images[start : start + BLOCK_IMAGES]
                finite = np.isfinite(block).reshape(len(block), -1).all(axis=1)
                if not finite.all():
                    first = start + int(np.flatnonzero(~finite)[0])
                    raise _fail(
                        path,
                        f"dataset 'images' has non-finite pixels (NaN/inf) in image {first}; "
                        "replace or drop those images",
                    )


def _parse_bands(value: Any) -> tuple[str, ...]:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        return tuple(b.strip() for b in value.split(",") if b.strip())
    if not isinstance(value, np.ndarray | list | tuple):  # a number: one name, as text
        return (str(value.item() if isinstance(value, np.generic) else value),)
    return tuple(str(v.decode() if isinstance(v, bytes) else v) for v in np.ravel(value))


def declared_bands(f: h5py.File, path: str | os.PathLike[str]) -> tuple[str, ...]:
    """The band names the file's ``bands`` attribute gives, one per channel of ``images``; ()
    when it gives none (no attribute, or an empty one: what galmerge wrote for an ImageSet
    without band names). Names that disagree with the channel count are a one-line
    GalmergeError naming the file and the fix: a model trained on them would record wrong
    bands, and `classify` cut stamps in them."""
    bands = _parse_bands(f.attrs["bands"]) if "bands" in f.attrs else ()
    c = int(f["images"].shape[1])
    if bands and len(bands) != c:
        names = ",".join(bands)
        names = names if len(names) <= 60 else names[:57] + "..."
        meant = guess_band_names(bands, c)  # ('gri',) on 3 channels: g,r,i
        example = ",".join(meant) if meant is not None else \
            ",".join(f"ch{i}" for i in range(min(c, 6))) + (",..." if c > 6 else "")
        raise _fail(
            Path(path),
            f"dataset 'images' has {c} channels but attribute 'bands' lists {len(bands)} "
            f"({names}); give one name per channel, comma-separated (e.g. "
            f"h5py.File(FILE, 'r+').attrs['bands'] = '{example}'), or delete the attribute "
            "(the channels are then named ch0, ch1, ...)",
        )
    return bands


def _attr_str(attrs: h5py.AttributeManager, name: str) -> str | None:
    if name not in attrs:
        return None
    value = attrs[name]
    return value.decode() if isinstance(value, bytes) else str(value)


def declared_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata a file states itself (its ``galmerge_meta`` attribute; {} for a file
    written by other tools), telling a stated ``image_source`` from the default one."""
    with h5py.File(path, "r") as f:
        raw = _attr_str(f.attrs, META_ATTR)
    try:
        meta = json.loads(raw) if raw else {}
    except (ValueError, TypeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def read_imageset(
    path: str | os.PathLike[str],
    in_memory: bool | None = None,
    *,
    memory_limit: int | None = None,
    validate: bool = True,
) -> ImageSet:
    """Read a schema file as an `ImageSet`.

    ``in_memory`` None loads the images into a float32 tensor when they take less than
    ``memory_limit`` bytes (default: 25% of available RAM), else keeps them on disk behind an
    `H5Images` reader. uint8 images keep their 0..255 values.
    """
    import torch

    path = Path(path)
    if validate:
        validate_imageset_file(path)
    with h5py.File(path, "r") as f:
        images = f["images"]
        n, c = images.shape[0], images.shape[1]
        if in_memory is None:
            limit = default_memory_limit() if memory_limit is None else memory_limit
            in_memory = int(np.prod(images.shape)) * 4 <= limit
        labels = f["labels"][()].astype(np.int64) if "labels" in f else np.full(n, -1)
        if "id" in f:
            ids = f["id"].asstr()[()] if f["id"].dtype.kind == "O" else f["id"][()]
            ids = np.asarray(ids)
        else:
            ids = np.arange(n, dtype=np.int64)
        ra = f["ra"][()].astype(np.float64) if "ra" in f else None
        dec = f["dec"][()].astype(np.float64) if "dec" in f else None
        bands = declared_bands(f, path) or tuple(f"ch{i}" for i in range(c))
        survey = _attr_str(f.attrs, "survey") or f"hdf5:{path}"
        scale = f.attrs.get("pixel_scale_arcsec")
        pixel_scale = None if scale is None or not np.isfinite(scale) else float(scale)
        meta: dict[str, Any] = {}
        raw_meta = _attr_str(f.attrs, META_ATTR)
        if raw_meta:
            try:
                meta = dict(json.loads(raw_meta))
            except (ValueError, TypeError):
                meta = {}
        if "stretch" in f.attrs and "stretch" not in meta:
            meta["stretch"] = _attr_str(f.attrs, "stretch")
        if "stretch_scale" in f.attrs and "stretch_scale" not in meta:
            meta["stretch_scale"] = float(f.attrs["stretch_scale"])
        meta["storage_dtype"] = str(images.dtype)  # how the file stores pixels (a field now)
        data: Any
        if in_memory:
            data = torch.from_numpy(np.ascontiguousarray(images[()], dtype=np.float32))
        else:
            data = None
    if data is None:
        data = H5Images(path)
    return ImageSet(
        images=data,
        labels=torch.as_tensor(labels, dtype=torch.int64),
        ids=ids,
        bands=bands,
        survey=survey,
        pixel_scale_arcsec=pixel_scale,
        ra=ra,
        dec=dec,
        meta=meta,
    )


def stretch_defaults(sample: np.ndarray) -> dict[str, Any]:
    """Stretch metadata for images that declare none: "none" for uint8, else arcsinh.

    The arcsinh scale is the background noise (1.4826 x MAD of a 4-pixel border frame), so
    faint tails are lifted to about one unit; noise-free simulations (a flat zero background)
    fall back to 1% of the 99.5th percentile, which acts like a log stretch.
    """
    if sample.dtype == np.uint8:
        return {"stretch": "none"}
    x = np.asarray(sample, dtype=np.float64)
    if x.ndim == 3:
        x = x[None]
    edge = min(4, max(1, x.shape[-1] // 8))
    frame = np.concatenate(
        [
            x[..., :edge, :].ravel(),
            x[..., -edge:, :].ravel(),
            x[..., edge:-edge, :edge].ravel(),
            x[..., edge:-edge, -edge:].ravel(),
        ]
    )
    frame = frame[np.isfinite(frame)]
    sigma = 0.0
    if frame.size:
        sigma = 1.4826 * float(np.median(np.abs(frame - np.median(frame))))
    if not np.isfinite(sigma) or sigma <= 0:
        finite = np.abs(x[np.isfinite(x)])
        peak = float(np.percentile(finite, 99.5)) if finite.size else 0.0
        sigma = 0.01 * peak if peak > 0 else 1.0
    return {"stretch": "arcsinh", "stretch_scale": float(sigma)}


def sample_images(images: Any, count: int = 256) -> np.ndarray:
    """Up to ``count`` evenly spaced images of a tensor, array or `LazyImages` as numpy."""
    n = len(images)
    idx = np.unique(np.linspace(0, n - 1, min(n, count)).astype(np.int64))
    if hasattr(images, "detach"):
        return images[torch_index(idx)].detach().cpu().numpy()
    return np.asarray(images[idx])


def torch_index(idx: np.ndarray) -> Any:
    import torch

    return torch.as_tensor(idx, dtype=torch.int64)
