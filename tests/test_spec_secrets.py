"""A password in a survey option URL (``sdss?sas_url=http://user:pw@host/...``) is used for the
requests, and never shown: not in any line galmerge prints, not in any file it writes."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from fake_sdss import FakeSdss
from test_classify import _sdss_checkpoint

from galmerge import Option, Survey, hookimpl
from galmerge.cli import cli

SECRET = "s3cretPW"


def _run(*args: str):
    return CliRunner().invoke(cli, list(args))


def _files_holding(folder: Path, text: str) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and text.encode() in p.read_bytes())


def _spec(fake: FakeSdss, extra: str = "") -> str:
    sas = fake.sas_url.replace("://", f"://al:{SECRET}@")
    sky = fake.url.replace("://", f"://al:{SECRET}@")
    return f"sdss?sas_url={sas}&skyserver_url={sky}{extra}"


@pytest.mark.parametrize("suffix", [".csv", ".fits", ".h5", ".parquet"])
def test_a_password_in_a_survey_option_is_in_no_output_and_no_line(tmp_path, monkeypatch,
                                                                   suffix):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GALMERGE_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("GALMERGE_SDSS_SAS_URL", raising=False)
    monkeypatch.delenv("GALMERGE_SDSS_SKYSERVER_URL", raising=False)
    ckpt = _sdss_checkpoint(tmp_path / "best.pt")
    with FakeSdss() as fake:
        cat = tmp_path / "c.csv"
        cat.write_text("objID,ra,dec\n" + "".join(f"{i},{g.ra},{g.dec}\n"
                                                   for i, g in enumerate(fake.galaxies)))
        out = tmp_path / f"o{suffix}"
        args = ["classify", str(cat), "--model", str(ckpt), "--survey", _spec(fake),
                "--cache", str(tmp_path / "c.h5"), "--output", str(out), "--prior", "0.3"]
        res = _run(*args)
        assert res.exit_code == 0, res.output
        assert fake.count("frame-") > 0  # the option's server was the one asked
        assert SECRET not in res.output and f"al:{SECRET}" not in res.output
        assert "***@" in res.output or "survey 'sdss'" in res.output
        # the same command again (the user passes the option again): it resumes from the cache
        frames = fake.count("frame-")
        again = _run(*args)
        assert again.exit_code == 0, again.output
        assert fake.count("frame-") == frames
        assert SECRET not in again.output
        # a failing run's error lines do not show it either
        fake.add_fault("frame-", "500", times=-1)
        failing = ["classify", str(cat), "--model", str(ckpt), "--survey",
                   _spec(fake, "&attempts=1&max_failed_requests=1&data_release=16"),
                   "--cache", str(tmp_path / "c2.h5"), "--output", str(tmp_path / "f.csv")]
        failed = _run(*failing)
        assert failed.exit_code != 0
        assert SECRET not in failed.output, failed.output
        # once the service works again the same command fetches the failed rows, with the
        # credentials of its own command line (the output records the spec without them)
        fake.faults.clear()
        resumed = _run(*failing)
        assert resumed.exit_code == 0, resumed.output
        assert (tmp_path / "f.csv").read_text().count(",ok") == len(fake.galaxies)
        bad = _run("classify", str(cat), "--model", str(ckpt), "--survey",
                   _spec(fake, "&timeout=0"), "--output", str(tmp_path / "b.csv"))
        assert bad.exit_code != 0 and SECRET not in bad.output, bad.output
    assert _files_holding(tmp_path, SECRET) == []


class RemoteSurvey:
    """A labelled survey behind a URL option (as a third-party plugin may have): the synthetic
    set, whatever the URL."""

    @staticmethod
    def _load(arg, options):
        from galmerge.data.datasets import load_imageset

        return load_imageset("synthetic:pristine?n=48&size=32")

    @hookimpl
    def register_surveys(self):
        return [Survey(name="remote", description="labelled data behind a URL", load=self._load,
                       options={"url": Option(None, "the server", type=str)})]


@pytest.fixture
def remote(register_plugin, tmp_path, monkeypatch):
    register_plugin(RemoteSurvey(), "remote-test")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GALMERGE_DATA", str(tmp_path / "data"))
    return f"remote?url=http://al:{SECRET}@127.0.0.1:9/labelled"


@pytest.mark.parametrize("command", ["train", "tune"])
def test_a_labelled_spec_with_a_password_is_refused_before_any_run_folder(remote, tmp_path,
                                                                          command):
    # a run records its specs (config.toml, checkpoints) and reads them back to resume,
    # evaluate and reproduce: credentials there would have to be kept, so they are refused
    extra = (["--run-dir", "run", "--epochs", "1"] if command == "train"
             else ["--study-dir", "run", "--n-trials", "1", "--epochs", "1", "--strategy", "dann"])
    res = _run(command, "--source", "synthetic:pristine?n=48&size=32", "--target", remote,
               *extra)
    assert res.exit_code != 0
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    assert "--target remote?url=http://***@127.0.0.1:9/labelled" in lines[0]
    assert "holds a user name or password" in lines[0] and "environment variable" in lines[0]
    assert SECRET not in res.output
    assert not (tmp_path / "run").exists()
    assert _files_holding(tmp_path, SECRET) == []


def test_evaluate_refuses_a_labelled_spec_with_a_password(remote, tmp_path):
    # evaluate records the spec it was given in metrics.json
    res = _run("train", "--source", "synthetic:pristine?n=48&size=32", "--target",
               "synthetic:noisy?n=48&size=32", "--run-dir", "run", "--epochs", "1",
               "--strategy", "none", "--quiet")
    assert res.exit_code == 0, res.output
    res = _run("evaluate", "run", "--target", remote)
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert "--target remote?url=http://***@127.0.0.1:9/labelled" in res.output, res.output
    assert SECRET not in res.output
    # fraction's source validation statistics (cached in the run, recorded in --json) too
    from galmerge.errors import GalmergeError
    from galmerge.fractions.validation_stats import load_validation

    with pytest.raises(GalmergeError, match=r"--source remote\?url=http://\*\*\*@"):
        load_validation(tmp_path / "run", source=remote, refresh=True)
    assert _files_holding(tmp_path, SECRET) == []


def test_preview_names_its_default_file_without_the_password(remote, tmp_path):
    res = _run("preview", remote, "--n", "4")
    assert res.exit_code == 0, res.output
    assert SECRET not in res.output
    made = [p.name for p in tmp_path.glob("preview-*.png")]
    assert len(made) == 1 and SECRET not in made[0] and "al" not in made[0].split("http")[1]
