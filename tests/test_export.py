"""`galmerge export`: ONNX and TorchScript files that agree with the checkpoint and run without
galmerge; `classify --model model.onnx` through ONNX Runtime."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from galmerge.cli import cli
from galmerge.data.preprocess import normalise
from galmerge.models.inference import merger_probability
from galmerge.models.model import build_model, load_model, save_checkpoint

SIZE = 24
SPEC = {"survey": "test", "bands": ["g", "r", "i"], "channels": 3, "image_size": SIZE,
        "pixel_scale_arcsec": 0.396, "image_source": "frames", "stretch": "arcsinh",
        "stretch_scale": 0.5, "mean": [0.1, 0.2, 0.3], "std": [0.9, 1.1, 1.3]}  # fmt: skip


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = build_model("deepmerge", 3, SIZE)
    with torch.no_grad():  # spread the probabilities over [0, 1]
        model.head[-1].weight.mul_(200)
    model.eval()
    source = {**SPEC, "stretch": "none", "mean": [0.0] * 3, "std": [2.0] * 3}
    path = tmp_path / "run" / "best.pt"
    save_checkpoint(path, {
        "galmerge_version": "test", "backbone": "deepmerge", "backbone_options": {},
        "in_channels": 3, "image_size": SIZE, "num_classes": 2, "model": model.state_dict(),
        "temperature": 1.5, "preprocess": {"source": source, "target": dict(SPEC)},
        "config": {}, "epoch": 1, "training_state": None,
    })  # fmt: skip
    return path


def stamps(n: int = 13) -> np.ndarray:
    rng = np.random.default_rng(1)
    return (rng.standard_normal((n, 3, SIZE, SIZE)) * 2.0).astype(np.float32)


def checkpoint_outputs(ckpt: Path, images: np.ndarray, domain: str = "target"):
    loaded = load_model(ckpt)
    with torch.no_grad():
        _, logits = loaded.model(normalise(torch.from_numpy(images), loaded.preprocess[domain]))
    return merger_probability(logits, loaded.temperature), logits.numpy()


def test_onnx_runtime_agrees_with_the_checkpoint(checkpoint: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    result = CliRunner().invoke(cli, ["export", str(checkpoint.parent), "--format", "onnx"])
    assert result.exit_code == 0, result.output
    path = checkpoint.parent / "model.onnx"
    assert path.is_file()

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = stamps()
    p_onnx, logits_onnx = session.run(["p_merger", "logits"], {"images": images})
    p_ckpt, logits_ckpt = checkpoint_outputs(checkpoint, images)
    assert p_ckpt.std() > 0.05  # the comparison covers more than one value
    np.testing.assert_allclose(p_onnx, p_ckpt, rtol=0, atol=1e-5)
    np.testing.assert_allclose(logits_onnx, logits_ckpt, rtol=1e-5, atol=1e-5)

    meta = json.loads(session.get_modelmeta().custom_metadata_map["galmerge"])
    assert meta["preprocess"] == SPEC
    assert meta["temperature"] == 1.5 and meta["domain"] == "target"
    assert meta["input"]["shape"] == ["N", 3, SIZE, SIZE]


def test_onnx_file_runs_without_galmerge(checkpoint: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    out = tmp_path / "elsewhere" / "m.onnx"
    assert CliRunner().invoke(cli, ["export", str(checkpoint), "--output", str(out)]).exit_code == 0
    np.save(tmp_path / "x.npy", stamps(5))
    code = (
        "import sys, numpy as np, onnxruntime as ort\n"
        "sys.modules['galmerge'] = None  # any import of galmerge would fail\n"
        f"s = ort.InferenceSession({str(out)!r}, providers=['CPUExecutionProvider'])\n"
        f"print(list(s.run(['p_merger'], {{'images': np.load({str(tmp_path / 'x.npy')!r})}})[0]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=tmp_path, check=True)  # fmt: skip
    p = np.array(json.loads(run.stdout.replace("np.float32(", "").replace(")", "")))
    np.testing.assert_allclose(p, checkpoint_outputs(checkpoint, stamps(5))[0], atol=1e-5)


def test_torchscript_agrees_and_carries_the_spec(checkpoint: Path) -> None:
    result = CliRunner().invoke(cli, ["export", str(checkpoint), "--format", "torchscript",
                                      "--domain", "source"])  # fmt: skip
    assert result.exit_code == 0, result.output
    extra = {"galmerge.json": ""}
    module = torch.jit.load(str(checkpoint.parent / "model.torchscript.pt"), _extra_files=extra)
    assert json.loads(extra["galmerge.json"])["domain"] == "source"
    images = stamps()
    with torch.no_grad():
        p, logits = module(torch.from_numpy(images))
    p_ckpt, logits_ckpt = checkpoint_outputs(checkpoint, images, domain="source")
    np.testing.assert_allclose(p.numpy(), p_ckpt, atol=1e-5)
    np.testing.assert_allclose(logits.numpy(), logits_ckpt, rtol=1e-5, atol=1e-5)


def test_classify_with_an_onnx_model(checkpoint: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from galmerge.io.hdf5 import write_imageset
    from galmerge.plugin.imageset import ImageSet

    images = stamps(9)
    write_imageset(tmp_path / "stamps.h5", ImageSet(
        images=torch.from_numpy(images), labels=torch.zeros(9), ids=np.arange(9).astype(str),
        bands=("g", "r", "i"), survey="test", ra=np.arange(9.0), dec=np.arange(9.0)))  # fmt: skip
    assert CliRunner().invoke(cli, ["export", str(checkpoint)]).exit_code == 0
    onnx_file = checkpoint.parent / "model.onnx"
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(cli, ["classify", str(tmp_path / "stamps.h5"), "--model",
                                      str(onnx_file), "--output", str(out), "--quiet",
                                      "--batch-size", "4"])  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    header = lines[0].split(",")
    got = np.array([float(line.split(",")[header.index("p_merger")]) for line in lines[1:]])
    np.testing.assert_allclose(got, checkpoint_outputs(checkpoint, images)[0], atol=1e-5)

    # the file holds one domain's preprocessing: asking for the other is a one-line refusal
    result = CliRunner().invoke(cli, ["classify", str(tmp_path / "stamps.h5"), "--model",
                                      str(onnx_file), "--domain", "source", "--quiet"])  # fmt: skip
    assert result.exit_code != 0 and "export again with --domain source" in result.output


@pytest.mark.parametrize("damage", [
    lambda meta: "{not json",
    lambda meta: "[1, 2]",
    lambda meta: json.dumps({"format": "galmerge-export/1", "domain": "target"}),
    lambda meta: json.dumps({**meta, "format": "someone-else/1"}),
    lambda meta: json.dumps({**meta, "input": {"shape": ["N", "three", 24, 24]}}),
    lambda meta: json.dumps({**meta, "input": None}),
    lambda meta: json.dumps({**meta, "temperature": "hot"}),
    lambda meta: json.dumps({**meta, "preprocess": [1]}),
    lambda meta: json.dumps({**meta, "config": "x"}),
    lambda meta: json.dumps({**meta, "shift": {"stats_sha256": "abc"}}),
], ids=["not-json", "list", "no-preprocess", "foreign-format", "shape-text", "input-null",
        "temperature-text", "preprocess-list", "config-text", "shift-no-threshold"])
def test_damaged_onnx_metadata_is_one_line_naming_the_file(checkpoint: Path, tmp_path: Path,
                                                           damage) -> None:
    """classify --model X.onnx whose 'galmerge' metadata is not what export writes: one line
    naming the file and saying to export again, not a traceback."""
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from galmerge.io.hdf5 import write_imageset
    from galmerge.plugin.imageset import ImageSet

    write_imageset(tmp_path / "stamps.h5", ImageSet(
        images=torch.from_numpy(stamps(2)), labels=torch.zeros(2), ids=np.array(["a", "b"]),
        bands=("g", "r", "i"), survey="test"))  # fmt: skip
    assert CliRunner().invoke(cli, ["export", str(checkpoint)]).exit_code == 0
    onnx_file = checkpoint.parent / "model.onnx"
    proto = onnx.load(str(onnx_file))
    entry = next(e for e in proto.metadata_props if e.key == "galmerge")
    entry.value = damage(json.loads(entry.value))
    onnx.save(proto, str(onnx_file))
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(cli, ["classify", str(tmp_path / "stamps.h5"), "--model",
                                      str(onnx_file), "--output", str(out), "--quiet"],
                                catch_exceptions=False)  # fmt: skip
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert str(onnx_file) in lines[0] and "export the run directory again" in lines[0]
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["export", "nowhere"], "does not exist"),
        (["export", "{tmp}", "--format", "tflite"], "Invalid value for '--format'"),
    ],
)
def test_export_mistakes_are_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code != 0 and message in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("fmt", "name"), [("onnx", "best.pt"), ("onnx", "keep.onnx"),
                                           ("torchscript", "best.pt"), ("onnx", "model.csv")])
def test_an_export_never_replaces_another_file(checkpoint: Path, fmt: str, name: str) -> None:
    """--output may replace an earlier export of the same format, never the checkpoint itself
    or another file."""
    target = checkpoint.parent / name
    if not target.exists():
        target.write_bytes(b"someone's file")
    before = target.read_bytes()
    result = CliRunner().invoke(cli, ["export", str(checkpoint.parent), "--format", fmt,
                                      "--output", str(target)])
    assert result.exit_code != 0 and f"--output {target}" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert target.read_bytes() == before
    again = checkpoint.parent / f"again-{fmt}{'.onnx' if fmt == 'onnx' else '.torchscript.pt'}"
    for _ in range(2):  # an export of its own is replaced
        result = CliRunner().invoke(cli, ["export", str(checkpoint.parent), "--format", fmt,
                                          "--output", str(again)])
        assert result.exit_code == 0, result.output


def foreign_model(path: Path, fmt: str) -> Path:
    """Someone's own model file of the export's format, not written by galmerge (the ONNX one
    names 'galmerge' and '"preprocess"' in its text, as an export's metadata does)."""
    if fmt == "torchscript":
        class Double(torch.nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return x * 2

        torch.jit.save(torch.jit.trace(Double(), torch.zeros(2)), str(path))
        return path
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "mine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])  # fmt: skip
    proto = helper.make_model(graph, doc_string='my galmerge copy: {"preprocess": "mine"}')
    entry = proto.metadata_props.add()
    entry.key, entry.value = "notes", 'galmerge {"preprocess": 1}'
    onnx.save(proto, str(path))
    return path


@pytest.mark.parametrize(("fmt", "name"), [("torchscript", "mine.pt"),
                                           ("torchscript", "model.torchscript.pt"),
                                           ("onnx", "model.onnx")])
def test_an_export_never_replaces_a_model_of_the_same_format(checkpoint: Path, fmt: str,
                                                            name: str) -> None:
    """Only a file carrying galmerge's export metadata is an earlier export: another TorchScript
    archive or ONNX model is kept (one line), and replacing an export is said."""
    target = foreign_model(checkpoint.parent / name, fmt)
    before = target.read_bytes()
    result = CliRunner().invoke(cli, ["export", str(checkpoint.parent), "--format", fmt,
                                      "--output", str(target)])
    assert result.exit_code != 0 and "is not a galmerge" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert target.read_bytes() == before
    own = checkpoint.parent / f"own{'.onnx' if fmt == 'onnx' else '.torchscript.pt'}"
    outputs = []
    for _ in range(2):
        result = CliRunner().invoke(cli, ["export", str(checkpoint.parent), "--format", fmt,
                                          "--output", str(own)])
        assert result.exit_code == 0, result.output
        outputs.append(result.output.strip())
    assert "replacing" not in outputs[0]
    assert len(outputs[1].splitlines()) == 1 and "replacing the earlier export" in outputs[1]


def test_exported_graph_survives_huge_pixels(checkpoint: Path) -> None:
    """asinh of a pixel beyond 1e18 (x^2 overflows float32) is log(2|x|) in the exported graph
    as in the checkpoint's preprocessing: the same finite p_merger, not NaN."""
    ort = pytest.importorskip("onnxruntime")
    assert CliRunner().invoke(cli, ["export", str(checkpoint)]).exit_code == 0
    session = ort.InferenceSession(str(checkpoint.parent / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    images = stamps(5)
    images[1, 0, 3, 3] = 1e19  # / stretch_scale 0.5: x^2 = 4e38 overflows float32
    images[2, 1, 7, 7] = -3e30
    images[3, 2, 0, 0] = np.inf  # infinite stays infinite: NaN in both
    p_onnx = session.run(["p_merger"], {"images": images})[0]
    p_ckpt = checkpoint_outputs(checkpoint, images)[0]
    assert np.isfinite(p_ckpt[[0, 1, 2, 4]]).all()
    np.testing.assert_allclose(p_onnx, p_ckpt, rtol=0, atol=1e-5)
    extra = {"galmerge.json": ""}
    assert CliRunner().invoke(cli, ["export", str(checkpoint), "--format",
                                    "torchscript"]).exit_code == 0  # fmt: skip
    module = torch.jit.load(str(checkpoint.parent / "model.torchscript.pt"), _extra_files=extra)
    with torch.no_grad():
        p_ts = module(torch.from_numpy(images))[0].numpy()
    np.testing.assert_allclose(p_ts, p_ckpt, rtol=0, atol=1e-5)


def test_an_onnx_output_names_the_checkpoint_it_was_exported_from(checkpoint: Path,
                                                                 tmp_path: Path) -> None:
    """The export records the checkpoint's SHA-256, absolute path and time; classify's
    provenance keeps checkpoint_sha256 = the .onnx file's and adds
    exported_from_checkpoint_sha256; a checkpoint changed since the export gets a note."""
    ort = pytest.importorskip("onnxruntime")
    from galmerge.io.hdf5 import write_imageset
    from galmerge.io.provenance import sha256_file
    from galmerge.models.model import read_checkpoint
    from galmerge.plugin.imageset import ImageSet

    write_imageset(tmp_path / "stamps.h5", ImageSet(
        images=torch.from_numpy(stamps(6)), labels=torch.zeros(6), ids=np.arange(6).astype(str),
        bands=("g", "r", "i"), survey="test", ra=np.arange(6.0), dec=np.arange(6.0)))  # fmt: skip
    cwd = os.getcwd()
    os.chdir(checkpoint.parent.parent)
    try:  # a relative path, as typed
        assert CliRunner().invoke(cli, ["export", "run"]).exit_code == 0
    finally:
        os.chdir(cwd)
    onnx_file = checkpoint.parent / "model.onnx"
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    meta = json.loads(session.get_modelmeta().custom_metadata_map["galmerge"])
    original = sha256_file(checkpoint)
    assert meta["checkpoint"] == str(checkpoint.resolve())
    assert meta["checkpoint_sha256"] == original
    assert meta["checkpoint_content_sha256"] == read_checkpoint(checkpoint)["sha256"]
    assert meta["created_utc"].endswith("Z")

    def classify(name: str):
        out = tmp_path / name
        result = CliRunner().invoke(cli, ["classify", str(tmp_path / "stamps.h5"), "--model",
                                          str(onnx_file), "--output", str(out), "--quiet"])
        assert result.exit_code == 0, result.output
        return result.output, json.loads((tmp_path / f"{name}.provenance.json").read_text())

    said, prov = classify("a.csv")
    assert prov["checkpoint_sha256"] == sha256_file(onnx_file)
    assert prov["exported_from_checkpoint_sha256"] == original
    assert "changed since" not in said

    payload = read_checkpoint(checkpoint)  # evaluate --calibrate: a new temperature
    payload["temperature"] = 2.5
    save_checkpoint(checkpoint, payload)
    said, prov = classify("b.csv")
    assert prov["exported_from_checkpoint_sha256"] == original
    notes = [line for line in said.splitlines() if "changed since" in line]
    assert len(notes) == 1 and str(onnx_file) in notes[0] and "export it again" in notes[0]
    assert "Traceback" not in said

    import onnx  # an export made before the hash was recorded: its metadata lacks it

    proto = onnx.load(str(onnx_file))
    entry = next(e for e in proto.metadata_props if e.key == "galmerge")
    old_meta = {k: v for k, v in json.loads(entry.value).items()
                if not k.startswith(("checkpoint_", "created"))}
    entry.value = json.dumps(old_meta)
    onnx.save(proto, str(onnx_file))
    said, prov = classify("c.csv")
    notes = [line for line in said.splitlines() if "older galmerge" in line]
    assert len(notes) == 1 and str(onnx_file) in notes[0] and "export it again" in notes[0]
    arcsinh = old_meta["preprocess"].get("stretch") == "arcsinh"
    assert ("1e18" in notes[0]) == arcsinh  # only an arcsinh stretch overflowed
    assert "changed since" not in said
    from galmerge.models.export import stale_note

    for stretch in ("arcsinh", "none"):
        note = stale_note(onnx_file, {**old_meta, "preprocess": {"stretch": stretch}})
        assert "older galmerge" in note and ("1e18" in note) == (stretch == "arcsinh")


def test_export_mistakes_name_export(checkpoint: Path, tmp_path: Path) -> None:
    """A TorchScript file given as the model, and a damaged shift_stats.npz, are one line each
    (no torch warning), with advice for export."""
    user = foreign_model(tmp_path / "user.pt", "torchscript")
    code = ("import sys; from galmerge.cli import cli; "
            f"sys.argv = ['galmerge', 'export', {str(user)!r}]; cli()")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode != 0
    assert run.stdout.strip() == "" and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "is a TorchScript archive, not a galmerge checkpoint" in run.stderr

    (checkpoint.parent / "shift_stats.npz").write_bytes(b"PK\x03\x04 damaged")
    result = CliRunner().invoke(cli, ["export", str(checkpoint.parent)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "delete it to export without a shift score" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (checkpoint.parent / "model.onnx").exists()


def test_a_damaged_checkpoint_message_is_not_cut_mid_word(checkpoint: Path) -> None:
    """torch's long zip error is cut after a sentence or a word, never inside one."""
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[:-100])  # no zip directory
    with pytest.raises(Exception) as torch_error:
        torch.load(checkpoint, weights_only=True)
    full = str(torch_error.value).strip().splitlines()[0]
    assert len(full) > 120  # the case: a message longer than the line keeps
    result = CliRunner().invoke(cli, ["export", str(checkpoint)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    why = result.output.split("kind of file: ", 1)[1].split("); pass", 1)[0].removesuffix("...")
    assert full.startswith(why) and len(why) > 20
    assert len(why) == len(full) or full[len(why)] in " .", (why, full)
