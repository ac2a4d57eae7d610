"""Where classify's rows and stamps come from: an HDF5 image file read lazily, or a catalog's
positions with stamps from the cutout cache and, for the rest, the survey's cutout service.

A survey's service is wrapped in `SurveyService`: its network failures become row statuses
(``fetch-failed: ...``, retried by the next run), anything else is a bug in the plugin and fails
the run (`galmerge.errors.PluginBug`, naming the plugin, its traceback kept).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from galmerge.classification.catalogs import CatalogChunk
from galmerge.classification.cutout_cache import STATUS_OK, CutoutCache
from galmerge.errors import GalmergeError, PluginBug
from galmerge.io.http import shown_url
from galmerge.io.paths import data_dir
from galmerge.plugin.cutouts import CutoutRequest
from galmerge.plugin.imageset import guess_band_names

if TYPE_CHECKING:
    from galmerge.data.preprocess import PreprocessSpec
    from galmerge.plugin.imageset import ImageSet


def default_cache(survey: str, cache_key: str) -> Path:
    """``$GALMERGE_DATA/cache/<survey>-<hash of the service's cache key>.h5``."""
    digest = hashlib.sha256(cache_key.encode()).hexdigest()[:12]
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in survey)
    return data_dir() / "cache" / f"{safe}-{digest}.h5"


def is_image_file(path: Path) -> bool:
    import h5py

    if not h5py.is_hdf5(path):
        return False
    try:
        with h5py.File(path, "r") as f:
            return "images" in f
    except OSError:
        return False


def _named(bands: list[str]) -> bool:
    """Whether bands are named, not the ``ch0..`` placeholders of a file that names none."""
    return bool(bands) and not all(b == f"ch{i}" for i, b in enumerate(bands))


def check_stamps_fit(path: Path, images: ImageSet, spec: PreprocessSpec,
                     declared_source: str | None = None) -> None:
    """A one-line refusal when what an image file declares about its stamps (bands and their
    order, pixel scale, image source, 8-bit pixels) contradicts how the model's inputs were
    made; what either side does not declare (``ch0..`` bands, no pixel scale, a file without
    its ``image_source``: ``declared_source`` None) is not checked. The survey path refuses
    the same mismatches (`PreprocessSpec.stamp_geometry`)."""
    fix = "cut stamps the way the model was trained"
    have, want = [str(b) for b in images.bands], [str(b) for b in spec.bands]
    # a model trained before band names were checked against the channels may record other
    # names than channels: what they meant where that is clear (('g', ',', 'r', ',', 'i'),
    # ('gri',)), else (3 channels as ('g', 'r')) nothing stamps could match, so no check
    if len(want) != int(spec.n_channels):
        meant = guess_band_names(want, int(spec.n_channels))
        want = list(meant) if meant is not None else []
    if want and _named(have) and _named(want) and have != want:
        order = " (the same bands in another order)" if sorted(have) == sorted(want) else ""
        raise GalmergeError(f"{path}: stamps in bands {','.join(have)} but the model takes "
                            f"{','.join(want)}{order}; {fix}")
    scale, trained = images.pixel_scale_arcsec, spec.pixel_scale_arcsec
    if scale is not None and trained and abs(scale - trained) > 1e-3 * trained:
        raise GalmergeError(f"{path}: stamps of {scale:g} arcsec/pixel but the model takes "
                            f"{trained:g}; {fix}")
    if declared_source is not None and declared_source != spec.image_source:
        raise GalmergeError(f"{path}: image_source '{declared_source}' but the model was "
                            f"trained on '{spec.image_source}' images; {fix}")
    if images.storage_dtype == "uint8" and spec.stretch == "arcsinh":
        raise GalmergeError(f"{path}: 8-bit pixels, but the model takes calibrated fluxes "
                            f"(arcsinh-stretched); {fix}")


class ImageFileInput:
    """An HDF5 image file read lazily: rows are images, columns id/ra/dec/label. Its pixels are
    not scanned up front: a stamp with NaN/inf pixels is a row of status ``bad-image``."""

    kind = "hdf5"

    def __init__(self, path: Path, shape: tuple[int, int, int],
                 spec: PreprocessSpec | None = None) -> None:
        from galmerge.io.hdf5 import read_imageset, validate_imageset_file

        self.path = path
        # no whole-file NaN/inf scan: a stamp with non-finite pixels gets its own row status
        # (bad-image), one output row per input row as for a catalog
        validate_imageset_file(path, check_finite=False)
        self.images = read_imageset(path, in_memory=False, validate=False)
        got = (self.images.channels, self.images.image_size, int(self.images.images.shape[-2]))
        if got != shape:
            raise GalmergeError(
                f"{path}: images are {got[0]}x{got[2]}x{got[1]} but the model takes "
                f"{shape[0]}x{shape[1]}x{shape[2]}; cut stamps the way the model was trained"
            )
        if spec is not None:
            from galmerge.io.hdf5 import declared_meta

            source = declared_meta(path).get("image_source")
            check_stamps_fit(path, self.images, spec, None if source is None else str(source))
        self.columns = ["id"]
        if self.images.ra is not None:
            self.columns += ["ra", "dec"]
        self.labels = self.images.labels.numpy()
        if (self.labels >= 0).any():
            self.columns.append("label")

    def estimated_rows(self) -> int:
        return len(self.images)

    def chunks(self, chunk_rows: int) -> Iterator[CatalogChunk]:
        n = len(self.images)
        for start in range(0, n, chunk_rows):
            stop = min(n, start + chunk_rows)
            sl = slice(start, stop)
            ids = np.array([str(v) for v in self.images.ids[sl]], dtype=object)
            cols: dict[str, np.ndarray] = {"id": self.images.ids[sl]}
            ra = dec = np.full(stop - start, np.nan)
            if self.images.ra is not None:
                ra, dec = self.images.ra[sl], self.images.dec[sl]
                cols["ra"], cols["dec"] = ra, dec
            if "label" in self.columns:
                cols["label"] = self.labels[sl]
            yield CatalogChunk(start, cols, ra, dec, ids, np.full(stop - start, "", object))

    def read(self, chunk: CatalogChunk) -> np.ndarray:
        return self.images.batch(np.arange(chunk.start, chunk.start + len(chunk))).numpy()


@dataclass
class SurveyService:
    """A survey's cutout service with the names a failure message needs."""

    service: Any  # the plugin's CutoutService
    survey: str  # the survey's name
    plugin: str  # "plugin 'NAME' (distribution)" that registered it

    @classmethod
    def open(cls, name: str, record: Any, spec: Any, options: Mapping[str, Any],
             shown: str | None = None) -> SurveyService:
        """``record.cutouts(spec, options)``; a bad option value is one line."""
        from galmerge.plugin.manager import get_plugin_manager

        try:
            service = record.cutouts(spec, options)
        except (TypeError, ValueError) as exc:  # e.g. RetryPolicy.from_options: timeout=0
            from galmerge.io.provenance import hide_userinfo

            raise GalmergeError(hide_userinfo(f"--survey {shown or name}: bad option ({exc})"
                                              .splitlines()[0])) from None
        return cls(service, name, get_plugin_manager().describe_owner("surveys", name))

    def fetch(self, requests: list[CutoutRequest]) -> Iterator[Any]:
        """The service's results; an exception that is no network, HTTP or fetch failure is a
        bug in the plugin: `PluginBug`, naming it, with the plugin's traceback as its cause."""
        try:
            yield from self.service.fetch(requests)
        except (GalmergeError, PluginBug):
            raise
        except Exception as exc:
            if _network_failure(exc):
                raise
            raise PluginBug(
                f"survey '{self.survey}' ({self.plugin}) raised {type(exc).__name__} while "
                f"fetching stamps: {exc}".splitlines()[0][:300]
                + "; that is a bug in the plugin (its traceback is above): report it to the "
                "plugin's authors; rows classified so far are kept, and the same command "
                "resumes once it is fixed") from exc

    def summary(self) -> str | None:
        """The service's one-line summary (requests, retries, failures), if it has one."""
        summary = getattr(self.service, "summary", None)
        if not callable(summary):
            return None
        try:
            return str(summary()).strip() or None
        except Exception:  # the run is done: a broken summary must not fail it
            return None


def _network_failure(exc: BaseException) -> bool:
    """Network, HTTP or fetch trouble (a row status), as opposed to a bug."""
    import http.client

    from galmerge.io.http import classify_exception

    return (classify_exception(exc) is not None
            or isinstance(exc, OSError | http.client.HTTPException))


def survey_record(name: str, arg: str | None = None) -> Any:
    from galmerge.plugin.manager import get_plugin_manager

    record = get_plugin_manager().get("surveys", name)
    if record.cutouts is None:
        raise GalmergeError(
            f"survey '{name}' has no cutout service, so it cannot classify catalogs; pick a "
            "survey with one (see `galmerge list surveys`) or pass an HDF5 image file"
        )
    if arg is not None:  # a cutout service takes options only: ':ARG' would be dropped
        raise GalmergeError(
            f"--survey {name}:{arg}: survey '{name}' takes no ':{arg}' argument when "
            f"classifying; use --survey {name} (options go after '?', e.g. {name}?workers=8)"
        )
    return record


#: a row's status when the survey plugin broke the fetch protocol (a stamp of the wrong
#: shape, no result for the row): no network trouble, so no retry advice; retried by a rerun
STATUS_PLUGIN_ERROR = "plugin-error"


def cutout_options(record: Any, workers: int, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options a survey's ``cutouts`` gets: ``options`` plus classify's ``workers``
    (``--workers``) when the survey takes it, i.e. declares no ``cutout_options`` schema (it
    checks its own options) or declares ``workers`` in it; a survey whose schema leaves
    ``workers`` out is not handed an option it would refuse."""
    schema = getattr(record, "cutout_options", None)
    if not schema or "workers" in schema:
        return {"workers": int(workers), **options}
    return dict(options)


def fetch_stamps(keys: list[str], first: dict[str, int], chunk: CatalogChunk,
                 service: SurveyService, store: CutoutCache, fetched: Counter,
                 shape: tuple[int, int, int]) -> dict[str, str]:
    """Status per key after looking in the cache and fetching what is not there."""
    known = store.lookup(keys)
    out = {k: s for k, s in zip(keys, known, strict=True) if s is not None}
    todo = [k for k, s in zip(keys, known, strict=True) if s is None]
    if not todo:
        return out
    requests = []
    for j, key in enumerate(todo):
        i = first[key]
        requests.append(CutoutRequest(row=j, ra=float(chunk.ra[i]), dec=float(chunk.dec[i]),
                                      id=str(chunk.ids[i])))
    try:
        for result in service.fetch(requests):
            row = getattr(result, "row", None)
            if not isinstance(row, int | np.integer) or not 0 <= row < len(todo) \
                    or todo[row] in out:
                what = ("a result that is no CutoutResult" if row is None else
                        f"a second result for row {row}" if isinstance(row, int | np.integer)
                        and 0 <= row < len(todo) else
                        f"a result for row {row!r}, which it was not asked for (rows 0 to "
                        f"{len(todo) - 1})")
                raise PluginBug(
                    f"survey '{service.survey}' ({service.plugin}): its fetch returned {what}; "
                    "a CutoutService.fetch yields one CutoutResult per request, with the "
                    "request's row; that is a bug in the plugin: report it to the plugin's "
                    "authors (rows classified so far are kept)")
            row = int(row)
            key = todo[row]
            req = requests[row]
            st = str(result.status or "fetch-failed: no status")
            image = result.image
            if st == STATUS_OK:
                if image is None or tuple(np.shape(image)) != shape:
                    got = None if image is None else tuple(np.shape(image))
                    st = f"{STATUS_PLUGIN_ERROR}: stamp shape {got}, model needs {shape}"
                elif not np.isfinite(image).all():
                    st = "fetch-failed: non-finite pixels"
            out[key] = st
            fetched[st.split(":", 1)[0]] += 1
            if st == STATUS_OK or st == "no-coverage":  # lasting answers are remembered
                store.put(key, req.id, req.ra, req.dec, image if st == STATUS_OK else None, st)
                store.maybe_flush()
    except (GalmergeError, PluginBug):
        raise
    except Exception as exc:  # a failing service must not lose the rows: they get a status
        unanswered = f"fetch-failed: {type(exc).__name__}: {exc}".splitlines()[0][:200]
    else:  # the service ended without a result for these rows: it broke the protocol
        unanswered = f"{STATUS_PLUGIN_ERROR}: no result from the survey's fetch"
    for key in todo:
        if key not in out:
            out[key] = unanswered
            # asked for, and failed: counted, so that a run in which every row failed exits
            # non-zero (_fail_if_nothing_fetched)
            fetched[unanswered.split(":", 1)[0]] += 1
    store.flush()
    return out


def service_name(spec: str, service: Any) -> str | None:
    """``survey 'sdss' (https://...)``: what a user checks when fetching fails; None when no
    service was asked (an HDF5 image file)."""
    if service is None:
        return None
    name = f"survey '{str(spec).split('?', 1)[0]}'"
    settings = getattr(service, "settings", None)
    urls = [getattr(service, "url", None)] + [
        getattr(settings, attr, None) for attr in ("skyserver_url", "sas_url", "base_url")
    ]
    # shown without user name, password or query: a private mirror's URL may carry them
    found = list(dict.fromkeys(shown_url(u) for u in urls if isinstance(u, str) and u))
    return f"{name} ({', '.join(found)})" if found else name
