"""`galmerge.fraction` from Python: on a tiny real run's classify output it gives what
`galmerge fraction --json` prints for the same arguments, takes ``bins`` as Python values, and
refuses bad ones in one line."""

from __future__ import annotations

import copy
import json
import os
import shutil
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from eval_helpers import tiny_run, write_pair

import galmerge
from galmerge.cli import cli


@pytest.fixture(scope="module")
def classified(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fraction_api")
    source, target = write_pair(root / "data", n=80)
    run = root / "run"
    tiny_run(run, source, target, "none", epochs=1, max_steps_per_epoch=2)
    output = root / "out.csv"
    res = CliRunner().invoke(cli, ["classify", str(root / "data" / "target.h5"), "--model",
                                   str(run), "--output", str(output), "--quiet",
                                   "--device", "cpu"])
    assert res.exit_code == 0, res.output
    return {"run": run, "csv": output, "root": root}


def _cli_json(*args: str) -> dict[str, Any]:
    res = CliRunner().invoke(cli, ["fraction", *args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def _same(python: dict[str, Any], command: dict[str, Any]) -> None:
    """Equal payloads, but for the time each was made."""
    python, command = copy.deepcopy(python), copy.deepcopy(command)
    for payload in (python, command):
        assert payload["provenance"].pop("created_utc").endswith("Z")
    assert python == command


def test_fraction_gives_the_payload_of_the_command(classified) -> None:
    run, csv = classified["run"], classified["csv"]
    payload = galmerge.fraction(str(csv), str(run), bootstrap=30, seed=3, threshold=0.4)
    assert set(payload["estimators"]) == {"naive", "acc", "em", "bbse"}
    assert payload["recommended"] in payload["estimators"] and payload["n"] == 80
    _same(payload, _cli_json(str(csv), "--model", str(run), "--bootstrap", "30", "--seed", "3",
                             "--threshold", "0.4"))
    # paths as Path objects, as a notebook passes them; and a payload json.dumps can write
    again = galmerge.fraction(csv, run, bootstrap=30, seed=3, threshold=0.4)
    _same(again, payload)
    assert json.loads(json.dumps(again)) == again


@pytest.mark.parametrize(
    ("bins", "text"),
    [
        ([0, 10, 20.5, 79], "0,10,20.5,79"),
        ((0.0, 10.0, 20.5, 79.0), "0,10,20.5,79"),
        (np.array([0, 10, 20.5, 79]), "0,10,20.5,79"),
        ([0, 20 / 3, 79], "0,6.666666666666667,79"),  # an edge kept to its last digit
        (2, "2"),
        (np.int64(3), "3"),
        ("0,10,20.5,79", "0,10,20.5,79"),  # the command's own text works too
    ],
)
def test_bins_as_python_values_bin_as_the_commands_text(classified, bins: Any,
                                                        text: str) -> None:
    run, csv = classified["run"], classified["csv"]
    payload = galmerge.fraction(csv, run, by="id", bins=bins, bootstrap=10)
    assert payload["by"] == "id" and sum(b["n"] for b in payload["bins"]) == 80
    _same(payload, _cli_json(str(csv), "--model", str(run), "--by", "id", "--bins", text,
                             "--bootstrap", "10"))


@pytest.mark.parametrize(
    "bins",
    [[0.2, 0.1], [0, 0], [1.0], [], [0, float("nan")], [0, float("inf")], 0, -2, 2.5,
     np.float64(4.0), True, np.bool_(True), [0, True], "x", "3,1", "0", "",
     ["0", "1"], np.array([[0, 1], [1, 2]]), np.array(4), {0, 1}, {"lo": 0}, b"0,1",
     type(None)],
    ids=repr,
)
def test_bad_bins_are_one_line_before_any_work(classified, tmp_path, bins: Any) -> None:
    """Refused naming the argument and the fix, before the validation split is scored (the
    run directory gains no file)."""
    run = tmp_path / "run"
    shutil.copytree(classified["run"], run)
    (run / "validation_predictions.npz").unlink(missing_ok=True)
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(galmerge.GalmergeError) as info:
        galmerge.fraction(classified["csv"], run, by="id", bins=bins, bootstrap=0)
    message = str(info.value)
    assert message.startswith("bins=") and "e.g. bins=[0, 0.5, 1]" in message, message
    assert "e.g. bins=4" in message and "\n" not in message, message
    assert sorted(p.name for p in run.iterdir()) == before


def test_the_commands_checks_hold_for_python_too(classified) -> None:
    run, csv = classified["run"], classified["csv"]
    with pytest.raises(galmerge.GalmergeError, match="unknown device 'gpu'"):
        galmerge.fraction(csv, run, device="gpu")
    with pytest.raises(galmerge.GalmergeError, match="by and bins go together"):
        galmerge.fraction(csv, run, bins=[0, 1])
    with pytest.raises(galmerge.GalmergeError, match="too few for 1000 equal-count bins"):
        galmerge.fraction(csv, run, by="id", bins=1000, bootstrap=0)


def test_type_hints_of_every_public_job_resolve() -> None:
    for job in (galmerge.train, galmerge.classify, galmerge.evaluate, galmerge.fraction,
                galmerge.register_plugin):
        assert typing.get_type_hints(job), job.__name__
    hints = typing.get_type_hints(galmerge.fraction)
    assert hints["bins"] == str | int | Sequence[float] | None
    assert hints["results"] == str | os.PathLike[str]
    assert hints["return"] == dict[str, Any]
    assert typing.get_type_hints(galmerge.classify)["return"] is galmerge.ClassifySummary


def test_numpy_numbers_give_the_commands_payload_and_wrong_types_one_line(classified) -> None:
    """As `evaluate` and `classify` take them (`plain_number`): the payload stays JSON."""
    run, csv = classified["run"], classified["csv"]
    payload = galmerge.fraction(csv, run, bootstrap=np.int64(30), seed=np.int64(3),
                                threshold=np.float32(0.25))
    json.dumps(payload)
    _same(payload, galmerge.fraction(csv, run, bootstrap=30, seed=3, threshold=0.25))
    for kw, says in [({"bootstrap": 20.0}, "bootstrap must be a whole number"),
                     ({"seed": "3"}, "seed must be a whole number, got '3'; give the number"),
                     ({"seed": True}, "seed must be a whole number"),
                     ({"threshold": None}, "threshold must be a number")]:
        with pytest.raises(galmerge.GalmergeError, match=says) as info:
            galmerge.fraction(csv, run, **kw)
        assert "\n" not in str(info.value)
    for device, says in [(0, r"device 0: give a name.*'cuda:0'"),
                         (np.int64(2), r"give a name.*'cuda:2'"),
                         (torch.device("cpu"), r"give a name.*\(e\.g\. 'cpu'\)"),
                         (-1, r"device -1: give a name, .* or mps$")]:
        with pytest.raises(galmerge.GalmergeError, match=says):
            galmerge.fraction(csv, run, device=device)


def test_a_run_of_in_memory_sets_is_given_its_sets_again(tmp_path: Path) -> None:
    """The provenance names an ImageSet by its survey (its pixels stay out of the JSON)."""
    from train_toys import toy_sets

    source, target = toy_sets(n_source=40, n_target=40, channels=3, size=16)
    galmerge.train(source, target, strategy="none", epochs=1, batch_size=8, device="cpu",
                   quiet=True, run_dir=tmp_path / "run", max_steps_per_epoch=2)
    out = tmp_path / "out.csv"
    galmerge.predict(target, tmp_path / "run", device="cpu").write(out)
    payload = galmerge.fraction(out, tmp_path / "run", source=source, bootstrap=0)
    assert payload["provenance"]["source"] == f"ImageSet {source.survey}"
    json.dumps(payload)
