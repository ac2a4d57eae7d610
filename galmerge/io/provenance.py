"""What produced a classification output, recorded in it (or beside it, for CSV).

One flat record of strings and numbers: galmerge version, the checkpoint's SHA-256 (of the file's
bytes), a hash of the run's resolved configuration, survey and data release, the cutout kind,
the preprocessing applied, threshold, the score that selected the checkpoint, the input file
(absolute) and its SHA-256, and the time.
Parquet keeps it as schema metadata ``galmerge_provenance`` (JSON), HDF5 as file attributes,
FITS as header keywords of the table HDU, CSV as ``<output>.provenance.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

PROVENANCE_FORMAT = "galmerge-provenance/1"
SIDECAR_SUFFIX = ".provenance.json"
# a config without select_by predates it: those runs chose best.pt on the source validation loss
DEFAULT_SELECT = "source_val_loss"

# FITS keywords (8 characters at most) for the record's keys
FITS_KEYWORDS = {
    "galmerge_version": "GMVERSN", "galmerge_commit": "GMCOMMIT", "galmerge_dirty": "GMDIRTY",
    "checkpoint_sha256": "CKPTSHA", "checkpoint": "CKPTFILE",
    "config_sha256": "CFGSHA", "survey": "SURVEY", "data_release": "DATAREL",
    "cutout_kind": "CUTKIND", "domain": "DOMAIN", "preprocessing": "PREPROC",
    "temperature": "TEMPERAT", "threshold": "THRESH", "selection_score": "SELECTBY",
    "created_utc": "DATE", "format": "GMPROVFM",
    "shift_threshold": "SHIFTTHR", "shift_stats_sha256": "SHIFTSHA", "mc_dropout": "MCDROP",
    "exported_from_checkpoint_sha256": "EXPCKSHA", "input": "INPUT", "input_sha256": "INPUTSHA",
}


# A URL's user info: ``scheme://`` then a user name (no '/', ':', '@' or white space) and
# optionally ':' and a password, then '@'. The password may hold anything but '/' and white
# space, '@' too (it runs to the last '@'): what SQLAlchemy and urlsplit take unencoded
# (``postgresql://me:s3cr#t@host/db``, ``http://me:p&ss@host``, quotes, '?', '<'). Where in
# doubt it hides too much, never too little: in free text ``http://host:80?mail=me@x.org``
# loses ``host:80?mail=me``. A survey spec is hidden option by option (`shown_spec`), so an
# '@' in another option (``contact=me@uni.edu``) is never taken for user info there.
# The placeholder ``USER:PASSWORD@`` of galmerge's own examples (``postgresql://USER:PASSWORD@
# HOST/DB``) is shown as it is: a message must still show where the credentials go.
_URL_USERINFO = re.compile(
    r"([A-Za-z][A-Za-z0-9+.-]*://)(?!USER:PASSWORD@)[^\s/@:]*(?::[^\s/]*)?@")
#: what a URL's user info is shown as: ``http://***@host/path``
HIDDEN_USERINFO = "***"


def hide_userinfo(text: str) -> str:
    """``text`` (one URL, or any text holding URLs) with the user info of every URL in it, user
    name and password, as ``***`` (``http://***@host/sas``): galmerge's one way to hide URL
    credentials in what it prints or records (a survey spec, an error line, a command line, a
    tune study's database). `galmerge.io.http.shown_url` shows one URL for a message with it."""
    return _URL_USERINFO.sub(rf"\1{HIDDEN_USERINFO}@", text)


def shown_spec(spec: str) -> str:
    """A survey spec (``NAME[:ARG][?key=value&...]``) as galmerge prints and records it: the
    user info of every URL in it, percent-encoded ones included, is ``***``. The spec still
    names the same survey, data and options; the credentials it needs come from the command
    line (pass the option again) or the survey's URL environment variable."""
    from urllib.parse import unquote

    # part by part, as the spec is parsed: '&' ends an option, so it is never in a password
    # here, and another option's '@' is no user info
    text = str(spec)
    body, sep, query = text.partition("?")
    body = hide_userinfo(body)
    if not sep:
        return body
    parts = []
    for part in query.split("&"):
        key, eq, value = part.partition("=")
        plain = unquote(value)
        hidden = hide_userinfo(plain)
        parts.append(f"{key}{eq}{hidden}" if hidden != plain else hide_userinfo(part))
    return f"{body}?{'&'.join(parts)}"


def has_hidden_userinfo(spec: str) -> bool:
    """Whether a recorded spec had user info hidden by `shown_spec` (it cannot be used as it
    is: the credentials are not in it)."""
    return f"://{HIDDEN_USERINFO}@" in str(spec)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_FILE_HASHES: dict[tuple[str, int, int, int, int], str] = {}


def sha256_file_once(path: str | Path,
                     share: Callable[[Callable[[], str]], str] | None = None) -> str:
    """`sha256_file`, computed once per process for a file unchanged since (same device, inode,
    size and modification time): a tune study or a DDP run loads the same data many times.

    ``share`` (`galmerge.runtime.distributed.from_main`): called by every process of a run with
    the computation, it runs it in one process and returns that result in all; each keeps it as
    its own, so the processes of a torchrun run read the file once between them.
    """
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if share is not None:  # called by every process, whatever each has kept
        _FILE_HASHES[key] = share(lambda: _FILE_HASHES.get(key) or sha256_file(p))
    elif key not in _FILE_HASHES:
        _FILE_HASHES[key] = sha256_file(p)
    return _FILE_HASHES[key]


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 of the configuration as canonical JSON (sorted keys; non-JSON values as text)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def data_release(service: Any, options: Mapping[str, Any], cache_key: str) -> str:
    """The survey's data release as the cutout service states it (attribute, option, or the
    ``drNN`` part of its cache key); empty when it says nothing."""
    for value in (getattr(service, "data_release", None), options.get("data_release")):
        if value not in (None, ""):
            text = str(value)
            return text if text.lower().startswith("dr") else f"dr{text}"
    m = re.search(r"(?:^|:)(dr\w+)(?::|$)", cache_key)
    return m.group(1) if m else ""


def code_identity() -> dict[str, Any]:
    """What every output records about the code that wrote it: ``galmerge_version``, and
    ``galmerge_commit`` / ``galmerge_dirty`` where galmerge runs from its own git checkout
    (None otherwise: an installed release is named by its version alone)."""
    from galmerge import __version__
    from galmerge.runtime import code

    return {"galmerge_version": __version__, "galmerge_commit": code.git_commit(),
            "galmerge_dirty": code.git_dirty()}


def describe_code(record: dict[str, Any]) -> str:
    """``galmerge 0.1.0 (commit 0123456789ab, with uncommitted changes)`` from a
    `code_identity` record, for a line of a report."""
    commit = record.get("galmerge_commit")
    if not commit:
        return f"galmerge {record.get('galmerge_version', '?')}"
    dirty = ", with uncommitted changes" if record.get("galmerge_dirty") else ""
    return f"galmerge {record.get('galmerge_version', '?')} (commit {str(commit)[:12]}{dirty})"


def record(*, checkpoint: Path, config: Mapping[str, Any], survey: str, data_release: str,
           cutout_kind: str, domain: str, preprocessing: Mapping[str, Any], temperature: float,
           threshold: float, input: str | Path = "", input_sha256: str = "") -> dict[str, Any]:
    """The provenance record of one classify run (``created_utc`` is filled in when written).
    ``input``: the catalog or image file classified (recorded absolute), ``input_sha256`` its
    content; paths are recorded absolute so the record leads back from any folder."""
    return {
        "format": PROVENANCE_FORMAT,
        **code_identity(),  # galmerge_version, galmerge_commit, galmerge_dirty
        # absolute, link names kept (as run paths are): "toyrun/best.pt" names nothing elsewhere
        "checkpoint": os.path.abspath(checkpoint),
        "checkpoint_sha256": sha256_file(checkpoint),
        "config_sha256": config_hash(config),
        "survey": survey,
        "data_release": data_release,
        "cutout_kind": cutout_kind,
        "domain": domain,
        "preprocessing": json.dumps(dict(preprocessing), sort_keys=True, default=str),
        "temperature": float(temperature),
        "threshold": float(threshold),
        "selection_score": str(config.get("select_by") or DEFAULT_SELECT),
        "input": os.path.abspath(input) if input else "",
        "input_sha256": input_sha256,
        "created_utc": "",
    }


def stamped(prov: Mapping[str, Any]) -> dict[str, Any]:
    """The record with the time of writing."""
    out = dict(prov)
    out["created_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return out


def fits_cards(prov: Mapping[str, Any]) -> list[tuple[str, Any, str]]:
    """(keyword, value, comment) cards; text made ASCII (FITS headers are ASCII)."""
    cards = []
    for key, value in prov.items():
        word = FITS_KEYWORDS.get(key)
        if word is None or value is None:  # no commit outside a git checkout: no card
            continue
        if isinstance(value, str):
            value = value.encode("ascii", "backslashreplace").decode()
        # a comment only where it fits on the card (astropy warns when it cuts one)
        comment = key.replace("_", " ") if len(str(value)) <= 40 else ""
        cards.append((word, value, comment))
    return cards
