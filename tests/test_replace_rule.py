"""One rule for replacing an existing output (`galmerge.io.atomic.check_replaceable`), the same
for classify, export, compare, preview and fraction --plot: a symbolic link the user names is
refused in one line (never written through, never replaced); an empty file may be replaced.

Through the CLI (compare: its public `write_table`), on real files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_classify import env, read_csv, stamp_for  # noqa: F401  (fixture)

from galmerge.cli import cli
from galmerge.io.hdf5 import write_imageset
from galmerge.plugin.imageset import ImageSet

CSV_OUTPUT = "ra,dec,p_merger,is_merger,status\n1,2,0.3,0,ok\n"


def _run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _stamps(tmp: Path) -> Path:
    imgs = np.stack([stamp_for(float(i), float(i)) for i in range(3)])
    path = tmp / "s.h5"
    write_imageset(path, ImageSet(images=torch.from_numpy(imgs), labels=torch.tensor([-1] * 3),
                                  ids=np.arange(3), bands=("g", "r", "i"), survey="t",
                                  pixel_scale_arcsec=0.396))
    return path


def _refused(res, link: Path, option: str) -> None:
    assert res.exit_code != 0, res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert f"{option} {link} is a symbolic link" in res.output, res.output
    assert link.is_symlink()


def _commands(tmp: Path, ckpt: Path) -> dict[str, tuple[str, list[str], bytes]]:
    """name -> (option, CLI arguments before the output path, the content of an earlier output
    of that command: what a link may point at)."""
    stamps = _stamps(tmp)
    earlier = tmp / "earlier.onnx"
    assert _run("export", ckpt.parent, "--output", earlier).exit_code == 0
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 32
    results = tmp / "results.csv"
    results.write_text(CSV_OUTPUT)
    return {
        "out.csv": ("--output", ["classify", stamps, "--model", ckpt, "--quiet", "--output"],
                    CSV_OUTPUT.encode()),
        "out.onnx": ("--output", ["export", ckpt.parent, "--output"], earlier.read_bytes()),
        "grid.png": ("--output", ["preview", "synthetic:sdss?n=20&seed=2", "--n", "4", "-o"],
                     png),
        "fraction.png": ("--plot", ["fraction", results, "--model", ckpt.parent, "--plot"],
                         png),
    }


def test_a_symbolic_link_named_as_output_is_refused_by_every_command(env):  # noqa: F811
    """Before, a link to an earlier output (or a dangling one) was replaced by classify, export,
    preview and fraction --plot; now each refuses it in one line and leaves it as it was."""
    tmp, ckpt, _ = env
    for name, (option, args, content) in _commands(tmp, ckpt).items():
        victim = tmp / f"victim-{name}"
        victim.write_bytes(content)
        link = tmp / name
        link.symlink_to(victim)
        _refused(_run(*args, link), link, option)
        assert victim.read_bytes() == content, name
        link.unlink()
        link.symlink_to(tmp / "nowhere" / name)  # dangling: nothing written there either
        _refused(_run(*args, link), link, option)
        assert not (tmp / "nowhere").exists()
        link.unlink()


def test_compare_table_refuses_a_symbolic_link(tmp_path):
    from galmerge.errors import GalmergeError
    from galmerge.evaluation.comparison import write_table

    victim = tmp_path / "earlier.csv"
    write_table([{"strategy": "none", "x": 1.0}], victim)
    before = victim.read_bytes()
    link = tmp_path / "t.csv"
    link.symlink_to(victim)
    with pytest.raises(GalmergeError, match=r"--output .*t\.csv is a symbolic link"):
        write_table([{"strategy": "coral", "x": 2.0}], link)
    assert link.is_symlink() and victim.read_bytes() == before


def test_an_empty_file_may_be_replaced_by_every_output(env):  # noqa: F811
    """An empty file (e.g. from mktemp) holds nothing to lose: export refused it, while classify,
    compare and the figures replaced it. Now every output replaces it."""
    from galmerge.evaluation.comparison import write_table

    tmp, ckpt, _ = env
    for name, (_option, args, content) in _commands(tmp, ckpt).items():
        if name == "fraction.png":  # fraction needs a trained run to get to its plot
            continue
        empty = tmp / name
        empty.write_bytes(b"")
        res = _run(*args, empty)
        assert res.exit_code == 0, (name, res.output)
        assert empty.stat().st_size > 0, name
        if name.endswith(".png"):
            assert empty.read_bytes()[:8] == content[:8], name
    header, rows = read_csv(tmp / "out.csv")
    assert header[-1] == "status" and len(rows) == 3
    empty = tmp / "t.csv"
    empty.write_bytes(b"")
    write_table([{"strategy": "none", "x": 1.0}], empty)
    assert empty.read_text().startswith("strategy,")
