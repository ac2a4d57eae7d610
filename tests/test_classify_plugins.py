"""classify and a survey plugin: a bug in the plugin fails the command with its traceback, a
network failure stays a row status, and the service's summary ends the run."""

from __future__ import annotations

import csv
import traceback

import pytest
import requests
from click.testing import CliRunner
from test_classify import make_checkpoint, stamp_for

import galmerge
from galmerge import CutoutResult, Survey, hookimpl
from galmerge.errors import PluginBug

CATALOG = "objID,ra,dec\n1,150.0,2.0\nnet-2,151.0,2.0\n3,152.0,2.0\n"


def _decode_stamp_badly(req):
    """Where the toy plugin's bug is: the traceback must lead here."""
    return {"ra": req.ra}["flux"]


class ToyService:
    cache_key = "toy:g,r,i:16px"

    def __init__(self, options):
        self.mode = options.get("mode", "ok")
        self.asked = 0

    def fetch(self, requests_):
        for req in requests_:
            self.asked += 1
            if self.mode == "bug" and req.id == "3":
                _decode_stamp_badly(req)
            if self.mode == "network" and req.id.startswith("net"):
                raise requests.ConnectionError("connection refused by toy host")
            if self.mode == "down":
                raise requests.ConnectionError("connection refused by toy host")
            if self.mode == "silent":
                return
            yield CutoutResult(req.row, stamp_for(req.ra, req.dec), "ok")

    def summary(self):
        return f"toy service: {self.asked} requests, 0 retries"

    def close(self):
        pass


class ToySurveyPlugin:
    @hookimpl
    def register_surveys(self):
        return [Survey(name="toy", description="a toy survey",
                       cutouts=lambda preprocess, options: ToyService(options))]


@pytest.fixture
def toy(tmp_path, monkeypatch):
    from galmerge.plugin.manager import get_plugin_manager

    galmerge.register_plugin(ToySurveyPlugin(), "toy-plugin")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cat.csv").write_text(CATALOG)
    yield tmp_path, make_checkpoint(tmp_path / "run" / "best.pt")
    get_plugin_manager().unregister("toy-plugin")


def _classify(tmp_path, ckpt, mode):
    from galmerge.cli import cli

    return CliRunner().invoke(cli, [
        "classify", str(tmp_path / "cat.csv"), "--model", str(ckpt), "--survey",
        f"toy?mode={mode}", "--output", str(tmp_path / "out.csv"), "--chunk-rows", "1",
        "--cache", str(tmp_path / "stamps.h5")])


def _statuses(path):
    with open(path, newline="") as fh:
        return {row["objID"]: row["status"] for row in csv.DictReader(fh)}


def test_a_bug_in_a_survey_plugin_fails_the_command_with_its_traceback(toy):
    tmp_path, ckpt = toy
    res = _classify(tmp_path, ckpt, "bug")
    assert res.exit_code != 0
    exc = res.exception
    assert isinstance(exc, PluginBug) and not isinstance(exc, galmerge.GalmergeError)
    assert "survey 'toy' (plugin 'toy-plugin'" in str(exc) and "KeyError" in str(exc)
    assert isinstance(exc.__cause__, KeyError)
    shown = "".join(traceback.format_exception(exc))
    assert "_decode_stamp_badly" in shown and '{"ra": req.ra}["flux"]' in shown
    assert not (tmp_path / "out.csv").exists()  # no output claims the row failed to fetch
    # the chunks done before the bug are kept: fixed, the same command resumes
    res = _classify(tmp_path, ckpt, "ok")
    assert res.exit_code == 0, res.output
    assert _statuses(tmp_path / "out.csv") == {"1": "ok", "net-2": "ok", "3": "ok"}


def test_a_network_failure_in_a_survey_plugin_stays_a_row_status(toy):
    tmp_path, ckpt = toy
    res = _classify(tmp_path, ckpt, "network")
    assert res.exit_code == 0, res.output
    assert _statuses(tmp_path / "out.csv") == {
        "1": "ok", "net-2": "fetch-failed: ConnectionError: connection refused by toy host",
        "3": "ok"}


@pytest.mark.parametrize(("mode", "status", "says"), [
    ("down", "fetch-failed: ConnectionError: connection refused by toy host",
     "every fetch failed (3 rows"),
    # a service that ends without answering broke the protocol: no network advice
    ("silent", "plugin-error: no result from the survey's fetch",
     "no stamp came back usable (3 rows; 3 broke the cutout protocol"),
])
def test_a_run_in_which_every_row_failed_without_a_result_exits_nonzero(toy, mode, status, says):
    # rows a service failed with an exception (or never answered) were not counted as asked
    # for, so "every fetch failed" never fired and classify exited 0
    tmp_path, ckpt = toy
    res = _classify(tmp_path, ckpt, mode)
    assert res.exit_code != 0, res.output
    assert says in res.output and "Traceback" not in res.output
    assert _statuses(tmp_path / "out.csv") == dict.fromkeys(("1", "net-2", "3"), status)


def test_classify_ends_with_the_services_summary(toy):
    tmp_path, ckpt = toy
    res = _classify(tmp_path, ckpt, "ok")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    summary = [line for line in lines if "toy service:" in line]
    assert summary == ["survey 'toy': toy service: 3 requests, 0 retries"]
    assert lines.index(summary[0]) > next(i for i, line in enumerate(lines)
                                          if line.startswith("classified 3 rows"))
