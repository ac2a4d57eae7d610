"""`galmerge preview`: a PNG grid per class for any labelled survey spec."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from matplotlib.image import imread

from galmerge.cli import cli
from galmerge.io import hdf5 as hdf5io
from galmerge.plugin.imageset import ImageSet


def _check_png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 150 and img.shape[1] > 300
    assert float(img[..., :3].std()) > 0.05  # not blank
    return img


def test_preview_of_a_synthetic_survey(tmp_path):
    out = tmp_path / "grid.png"
    result = CliRunner().invoke(
        cli, ["preview", "synthetic:sdss?n=20&seed=2", "--n", "8", "--output", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "10 mergers" in result.output
    _check_png(out)


def test_preview_of_an_hdf5_file_and_seed_changes_the_examples(tmp_path):
    rng = np.random.default_rng(0)
    images = torch.as_tensor(rng.gamma(2.0, 0.05, (30, 3, 40, 40)), dtype=torch.float32)
    images[::2, :, 15:25, 15:25] += 5.0  # something to see
    imageset = ImageSet(images=images, labels=torch.arange(30) % 2, ids=np.arange(30),
                        bands=("g", "r", "i"), survey="toy", pixel_scale_arcsec=0.4)  # fmt: skip
    path = tmp_path / "toy.h5"
    hdf5io.write_imageset(path, imageset)
    outs = []
    for seed in (0, 1):
        out = tmp_path / f"toy{seed}.png"
        result = CliRunner().invoke(
            cli, ["preview", f"hdf5:{path}", "--n", "6", "--seed", str(seed), "-o", str(out)]
        )
        assert result.exit_code == 0, result.output
        outs.append(_check_png(out))
    assert outs[0].shape == outs[1].shape and not np.array_equal(outs[0], outs[1])


def test_preview_rejects_a_missing_file_in_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["preview", f"hdf5:{tmp_path / 'none.h5'}"])
    assert result.exit_code != 0
    assert "no such file" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("n", ["0", "-3"])
def test_preview_rejects_bad_counts(n):
    result = CliRunner().invoke(cli, ["preview", "synthetic:sdss", "--n", n])
    assert result.exit_code != 0 and "--n" in result.output


def test_long_ids_keep_their_head_and_tail() -> None:
    from galmerge.evaluation.preview import _short_id

    assert _short_id("synthetic-illustris-s0-000040") == "synthetic-illustris-s0-000040"
    assert _short_id("a-much-longer-synthetic-illustris-s0-000040") == (
        "a-much-longer-…stris-s0-000040"
    )
    assert _short_id(b"1237648720693755918") == "1237648720693755918"


def test_preview_output_mistakes_are_one_line_and_lose_no_file(tmp_path):
    spec = "synthetic:sdss?n=20&seed=2"
    table = tmp_path / "results.png"  # a user's file under a figure's name
    table.write_text("ra,dec\n1,2\n")
    for args, words in ((["-o", str(tmp_path / "p.txt")], "use a .png, .pdf or .svg"),
                        (["--seed", "-1"], "Invalid value for '--seed'"),
                        (["-o", str(table)], "is not a PNG figure")):
        result = CliRunner().invoke(cli, ["preview", spec, "--n", "4", *args])
        assert result.exit_code != 0 and words in result.output, result.output
        assert "Traceback" not in result.output
    assert table.read_text() == "ra,dec\n1,2\n"
    out = tmp_path / "grid.png"
    for _ in range(2):  # an earlier figure is replaced
        assert CliRunner().invoke(cli, ["preview", spec, "--n", "4", "-o", str(out)]).exit_code == 0


def test_n_is_the_number_of_images_shown(tmp_path):
    """`--n 1` showed two images (one per class): per class was max(1, n // 2)."""
    heights = {}
    for n in ("1", "2"):
        out = tmp_path / f"n{n}.png"
        result = CliRunner().invoke(cli, ["preview", "synthetic:sdss?n=6&cache=false",
                                          "--n", n, "-o", str(out)])
        assert result.exit_code == 0, result.output
        heights[n] = imread(out).shape[0]
    assert heights["1"] < heights["2"]  # one row (mergers) against two
