"""Export a trained classifier to a file that runs without galmerge (ONNX or TorchScript).

The exported graph takes raw stamps, exactly what classify feeds the checkpoint: float32
(N, C, H, W) in the survey's units. It applies the preprocessing itself (the optional
``asinh(x / stretch_scale)`` stretch, then per-band standardisation with the domain's mean and
std) and returns ``p_merger`` (N,) = softmax(logits / temperature)[:, 1] and ``logits`` (N, 2).
The preprocessing spec, temperature and domain are also stored as metadata (ONNX
``metadata_props``; TorchScript extra file ``galmerge.json``), so a reader can check the bands,
stamp size and pixel scale its stamps must have.

Exports of runs with ``shift_stats.npz`` (`galmerge.models.shift`), ONNX and TorchScript alike,
have a third output, ``shift_score`` (N,), computed inside the graph (the TorchScript module
returns the tuple ``(p_merger, logits, shift_score)``); its threshold is in the metadata
(``shift.threshold``; ``shift_flag`` = ``shift_score > shift.threshold``). Runs without the
file export two outputs. ``classify`` runs ONNX files (`OnnxInference`); it refuses TorchScript
files in one line (`refuse_torchscript`: loading one runs the TorchScript code it holds, and
nothing classify reads may run code), which are for use outside galmerge with ``torch.jit.load``.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from galmerge import __version__
from galmerge.data.preprocess import LN2, PreprocessSpec
from galmerge.errors import GalmergeError
from galmerge.io import atomic
from galmerge.io.provenance import code_identity, sha256_file

FORMATS = ("onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
#: metadata key holding the JSON description (ONNX metadata_props / TorchScript extra file)
METADATA_KEY = "galmerge"
TORCHSCRIPT_EXTRA = "galmerge.json"
ONNX_OPSET = 17
#: beyond this |x / stretch_scale| the graph's asinh is log(2|x|) (preprocess.asinh_'s guard)
HUGE = 1e18


def _deployable(model: Any, spec: dict[str, Any], temperature: float,
                shift: dict[str, Any] | None = None) -> Any:
    """The classifier with preprocessing and the calibrated softmax folded in (and the shift
    score, when ``shift`` statistics are given)."""
    import torch
    from torch import nn

    class Deployable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.arcsinh = spec.get("stretch", "none") == "arcsinh"
            self.scale = float(spec.get("stretch_scale", 1.0))
            self.temperature = float(temperature)
            self.register_buffer("mean", torch.tensor(spec["mean"]).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(spec["std"]).view(1, -1, 1, 1))
            self.shift = shift is not None
            if shift is not None:
                for key in ("means", "components", "eigenvalues"):
                    self.register_buffer(f"shift_{key}", torch.as_tensor(shift[key]).float())
                self.sigma2 = float(shift["sigma2"])

        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
            x = images.float()
            if self.arcsinh:
                # asinh from elementary ops (no Asinh in the TorchScript-based ONNX exporter):
                # sign(x) log1p(|x| + x^2 / (1 + sqrt(1 + x^2))), as preprocess.asinh_, with its
                # guard: beyond |x| = 1e18, x^2 overflows float32 and asinh(x) = log(2|x|) to float
                # precision (each branch sees a clamped |x|, so neither makes an inf or a NaN;
                # an infinite x stays infinite: ONNX Runtime's Log(inf) is 88.7, not inf)
                x = x / self.scale
                a = x.abs()
                small = torch.clamp(a, max=HUGE)
                a2 = small * small
                near = torch.log1p(small + a2 / (1.0 + torch.sqrt(1.0 + a2)))
                far = torch.log(torch.clamp(a, min=HUGE)) + LN2
                x = torch.where(torch.isinf(x), x, torch.sign(x) * torch.where(a > HUGE, far, near))
            x = (x - self.mean) / self.std
            features, logits = self.model(x)
            p_merger = torch.softmax(logits / self.temperature, dim=1)[:, 1]
            if self.shift:
                from galmerge.models.shift import score_tensors

                return p_merger, logits, score_tensors(
                    features.float(), self.shift_means, self.shift_components,
                    self.shift_eigenvalues, self.sigma2)
            return p_merger, logits

    return Deployable().eval()


def describe(loaded: Any, domain: str) -> dict[str, Any]:
    """The metadata written into an exported file."""
    spec = dict(loaded.preprocess[domain])
    return {
        "format": "galmerge-export/1",
        **code_identity(),  # galmerge_version, galmerge_commit, galmerge_dirty
        "domain": domain,
        "temperature": float(loaded.temperature),
        "preprocess": spec,
        "input": {
            "name": "images",
            "shape": ["N", int(spec.get("channels", len(spec["mean"]))),
                      int(spec["image_size"]), int(spec["image_size"])],  # fmt: skip
            "dtype": "float32",
            "units": "raw survey stamps; the stretch and standardisation are inside the model",
        },
        "outputs": {"p_merger": "softmax(logits / temperature)[:, 1]", "logits": "(N, 2)"},
        # what the export came from: the checkpoint's absolute path, the SHA-256 of its bytes
        # (classify's provenance checkpoint_sha256 of an output of the checkpoint itself) and
        # its content hash (what shift_stats.npz and summary.json record), and when
        "checkpoint": str(Path(loaded.path).resolve()),
        "checkpoint_sha256": sha256_file(loaded.path),
        "checkpoint_content_sha256": loaded.sha256 or "",
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        # the run's resolved config: classify's provenance hashes it and names its selection
        "config": dict(loaded.config or {}),
    }


def default_output(model: Path, fmt: str) -> Path:
    folder = model if model.is_dir() else model.parent
    return folder / f"model{SUFFIX[fmt]}"


def export_model(
    model: str | os.PathLike[str],
    fmt: str = "onnx",
    output: str | os.PathLike[str] | None = None,
    domain: str = "target",
) -> Path:
    """Write ``model`` (a run directory or checkpoint) as ONNX or TorchScript; returns the path."""
    import torch

    from galmerge.models.domain_norm import select_statistics
    from galmerge.models.model import load_model

    if fmt not in FORMATS:
        raise GalmergeError(f"unknown export format '{fmt}'; choose {' or '.join(FORMATS)}")
    out = Path(output) if output is not None else default_output(Path(model), fmt)
    _check_output(out, fmt)
    loaded = load_model(model, device="cpu")
    if domain not in loaded.preprocess:
        raise GalmergeError(f"model {loaded.path} has no '{domain}' preprocessing; use --domain "
                            f"{' or '.join(sorted(loaded.preprocess))}")  # fmt: skip
    select_statistics(loaded.model, domain)  # per-domain BatchNorm statistics: the --domain's
    meta = describe(loaded, domain)
    from galmerge.models.shift import load

    shift, _ = load(model, loaded.sha256, command="export")
    if shift is not None:  # both formats: a third output, the threshold in the metadata
        meta["shift"] = {"threshold": float(shift["threshold"]),
                         "stats_sha256": shift["meta"]["sha256"]}
        meta["outputs"]["shift_score"] = "(N,) galmerge.models.shift; flag: > shift.threshold"
    net = _deployable(loaded.model, meta["preprocess"], loaded.temperature, shift)
    _, channels, size, _ = meta["input"]["shape"]
    example = torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(0))
    writer = _write_onnx if fmt == "onnx" else _write_torchscript
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_with(out, lambda tmp: writer(net, example, meta, tmp))
    return out



def _check_output(out: Path, fmt: str) -> None:
    """One line, before any work, for an output that would destroy a file: a name of another
    kind (best.pt, config.toml), a symbolic link, or a non-empty file that is not a galmerge
    export of this format (`atomic.check_replaceable`: a new export may replace an old one)."""
    suffixes = (".onnx",) if fmt == "onnx" else (".pt", ".ts")
    if not out.name.lower().endswith(suffixes):
        raise GalmergeError(f"--output {out}: a {fmt} export is named *{suffixes[0]} (e.g. "
                            f"{default_output(out.parent, fmt).name}); choose such a name")
    atomic.check_replaceable(out, lambda p: export_metadata(p, fmt) is not None,
                             f"a galmerge {fmt} export", option="--output")


def export_metadata(path: str | os.PathLike[str], fmt: str) -> dict[str, Any] | None:
    """The galmerge metadata of an export of format ``fmt`` at ``path``, or None when it is no
    such export. Nothing in the file runs: a TorchScript archive's zip directory is listed and
    its ``<name>/extra/galmerge.json`` read; an ONNX file is parsed as a protobuf (its weights
    are not loaded) and its ``metadata_props`` read."""
    p = Path(path)
    if not p.is_file():
        return None
    if fmt == "torchscript":
        import zipfile

        if not is_torchscript(p):
            return None
        try:
            with zipfile.ZipFile(p) as z:
                names = [n for n in z.namelist() if n.endswith(f"/extra/{TORCHSCRIPT_EXTRA}")
                         and n.count("/") == 2]  # fmt: skip
                raw = z.read(names[0]) if len(names) == 1 else b""
        except (OSError, zipfile.BadZipFile, KeyError):
            return None
    else:
        try:
            import onnx
        except ImportError:
            raise GalmergeError(
                "ONNX export needs the onnx package: pip install 'galmerge[onnx]'"
            ) from None
        try:
            proto = onnx.load(str(p), load_external_data=False)
        except Exception:  # not a protobuf (DecodeError), unreadable
            return None
        raw = next((e.value for e in proto.metadata_props if e.key == METADATA_KEY), "")
    try:
        meta = json.loads(raw) if raw else None
    except ValueError:
        return None
    if not isinstance(meta, dict) or not str(meta.get("format", "")).startswith("galmerge-export/"):
        return None
    return meta


def _write_onnx(net: Any, example: Any, meta: dict[str, Any], path: Path) -> None:
    import torch

    try:
        import onnx
    except ImportError:
        raise GalmergeError(
            "ONNX export needs the onnx package: pip install 'galmerge[onnx]'"
        ) from None
    names = ["p_merger", "logits", *(["shift_score"] if "shift" in meta else [])]
    with warnings.catch_warnings():
        # the TorchScript-based exporter: the torch.export one needs onnxscript besides onnx
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
            input_names=["images"], output_names=names,
            dynamic_axes={"images": {0: "N"}, **{n: {0: "N"} for n in names}},
        )  # fmt: skip
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    proto.producer_name, proto.producer_version = "galmerge", __version__
    proto.doc_string = "galmerge merger classifier: raw stamps in, p_merger out (see metadata)"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _write_torchscript(net: Any, example: Any, meta: dict[str, Any], path: Path) -> None:
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export
        traced = torch.jit.trace(net, (example,))
        torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_EXTRA: json.dumps(meta)})


def is_torchscript(path: str | os.PathLike[str]) -> bool:
    """A TorchScript archive (a zip holding ``<name>/code/`` or ``<name>/constants.pkl``), which
    a galmerge checkpoint never is; the archive is only listed, nothing in it is loaded."""
    import zipfile

    p = Path(path)
    if not p.is_file() or not zipfile.is_zipfile(p):
        return False
    try:
        with zipfile.ZipFile(p) as z:
            return any("/code/" in n or n.endswith("/constants.pkl") for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def refuse_torchscript(model: str | os.PathLike[str]) -> None:
    """One line for ``classify --model FILE.torchscript.pt``."""
    if is_torchscript(model):
        raise GalmergeError(
            f"model {model} is a TorchScript export, which classify does not run (loading it "
            "runs the code it holds); pass the run directory or its best.pt, or export "
            "--format onnx")


# -- running an exported ONNX file (classify --model model.onnx) -------------------------------


def read_onnx_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The galmerge metadata of an exported ONNX file (one-line error if it has none)."""
    session = _session(path)
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if raw is None:
        raise GalmergeError(f"{path} was not exported by `galmerge export` (no '{METADATA_KEY}' "
                            "metadata); export the run directory again")  # fmt: skip
    try:
        meta = json.loads(raw)
    except ValueError:
        meta, why = None, "not JSON"
    else:
        why = _metadata_problem(meta)
    if why:
        raise GalmergeError(f"{path} has damaged or foreign '{METADATA_KEY}' metadata ({why}); "
                            "export the run directory again")  # fmt: skip
    return meta


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _metadata_problem(meta: Any) -> str:
    """What makes ``meta`` other than what `describe` writes (the keys OnnxInference reads),
    or '' when it is fine."""
    if not isinstance(meta, dict):
        return f"a JSON {type(meta).__name__}, not an object"
    fmt = meta.get("format")
    if not isinstance(fmt, str) or not fmt.startswith("galmerge-export/"):
        return f"format {fmt!r}, not galmerge-export/N"
    if not isinstance(meta.get("domain"), str):
        return "no domain name"
    if not _number(meta.get("temperature")) or meta["temperature"] <= 0:
        return "no positive temperature"
    if not isinstance(meta.get("preprocess"), dict):
        return "no preprocess table"
    shape = meta.get("input", {}).get("shape") if isinstance(meta.get("input"), dict) else None
    if not (isinstance(shape, list) and len(shape) == 4
            and all(isinstance(n, int) and not isinstance(n, bool) and n > 0
                    for n in shape[1:])):  # fmt: skip
        return "input.shape is not [N, channels, size, size]"
    if meta.get("config") is not None and not isinstance(meta["config"], dict):
        return "config is not a table"
    shift = meta.get("shift")
    if shift is not None and not (isinstance(shift, dict) and _number(shift.get("threshold"))):
        return "shift has no numeric threshold"
    return ""


def _session(path: str | os.PathLike[str], threads: int | None = None) -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise GalmergeError(
            "running an .onnx model needs onnxruntime: pip install 'galmerge[onnx]'"
        ) from None
    if not Path(path).is_file():
        raise GalmergeError(f"model {path} does not exist")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise GalmergeError(f"cannot load ONNX model {path}: {exc}".splitlines()[0]) from None


def stale_note(path: str | os.PathLike[str], meta: dict[str, Any]) -> str:
    """A note when the checkpoint an export names (at its recorded path, or of that name beside
    the export) is there but is no longer the file it was exported from, or when the export is
    older than that record ('' otherwise)."""
    recorded, named = meta.get("checkpoint_sha256"), meta.get("checkpoint")
    if "checkpoint_sha256" not in meta:  # exports made before stop 40 record no hash
        preprocess = meta.get("preprocess")
        arcsinh = isinstance(preprocess, dict) and preprocess.get("stretch") == "arcsinh"
        return (f"note: {path} was exported by an older galmerge: it records no checkpoint "
                "hash, so a changed checkpoint goes unnoticed"
                f"{', and it gives NaN for pixels above about 1e18' if arcsinh else ''}; "
                "export it again")
    if not isinstance(recorded, str) or not recorded or not isinstance(named, str) or not named:
        return ""
    beside = Path(path).parent / Path(named).name
    found = next((c for c in (Path(named), beside) if c.is_file()), None)
    if found is None:
        return ""
    try:
        now = sha256_file(found)
    except OSError:
        return ""
    if now == recorded:
        return ""
    return (f"note: {path} was exported from {found} (SHA-256 {recorded[:12]}), which has "
            f"changed since (now {now[:12]}: retrained or recalibrated?); export it again to "
            "classify with it")


@dataclass
class _OnnxSource:
    path: Path
    temperature: float
    config: dict[str, Any]


class OnnxInference:
    """classify's model seam for an exported .onnx file, run by ONNX Runtime on the CPU."""

    def __init__(
        self, path: str | os.PathLike[str], domain: str, batch_size: int, threads: int | None = None
    ) -> None:
        self.session = _session(path, threads)
        meta = read_onnx_metadata(path)
        if meta.get("domain") != domain:
            raise GalmergeError(
                f"{path} holds the '{meta.get('domain')}' preprocessing, not '{domain}'; use "
                f"--domain {meta.get('domain')} or export again with --domain {domain}"
            )
        self.spec = PreprocessSpec.from_dict(meta["preprocess"], f"{path}: preprocessing")
        _, channels, size, _ = meta["input"]["shape"]
        self.channels, self.size = int(channels), int(size)
        self.batch_size = max(1, int(batch_size))
        self.loaded = _OnnxSource(Path(path), float(meta["temperature"]),
                                  dict(meta.get("config") or {}))
        # provenance: the checkpoint the file was exported from (empty for older exports)
        self.exported_from = str(meta.get("checkpoint_sha256") or "")
        self.stale_note = stale_note(path, meta)
        outputs = {o.name for o in self.session.get_outputs()}
        self.shift: dict[str, Any] | None = None
        self.extra: list[str] = []
        self.shift_note = ""
        if "shift_score" in outputs and isinstance(meta.get("shift"), dict):
            from galmerge.models.shift import FLAG_COLUMN, SCORE_COLUMN

            self.shift = {"threshold": float(meta["shift"]["threshold"]),
                          "meta": {"sha256": str(meta["shift"].get("stats_sha256", ""))}}
            self.extra = [SCORE_COLUMN, FLAG_COLUMN]
        else:
            self.shift_note = (f"{path} was exported without shift statistics (a run trained "
                               "before shift scores, or an older export): the output has no "
                               "shift_score column")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        return self.predict(images)[0]

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """p_merger and, for a file with a ``shift_score`` output, shift_score/shift_flag."""
        out = np.empty(len(images), dtype=np.float64)
        score = np.full(len(images), np.nan)
        names = ["p_merger", *(["shift_score"] if self.shift is not None else [])]
        for start in range(0, len(images), self.batch_size):
            block = np.ascontiguousarray(images[start : start + self.batch_size], np.float32)
            got = self.session.run(names, {"images": block})
            out[start : start + len(block)] = got[0]
            if self.shift is not None:
                score[start : start + len(block)] = got[1]
        if self.shift is None:
            return np.clip(out, 0.0, 1.0), {}
        from galmerge.models.shift import flags as shift_flags

        flag = shift_flags(score, self.shift["threshold"])
        return np.clip(out, 0.0, 1.0), {self.extra[0]: score, self.extra[1]: flag}
