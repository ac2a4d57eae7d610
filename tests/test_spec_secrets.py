"""A password in a survey option URL (``sdss?sas_url=http://user:pw@host/...``) is used for the
requests, and never shown: not in any line galmerge prints, not in any file it writes."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from fake_sdss import FakeSdss
from test_classify import _sdss_checkpoint

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
        failed = _run("classify", str(cat), "--model", str(ckpt), "--survey",
                      _spec(fake, "&attempts=1&max_failed_requests=1&data_release=16"),
                      "--cache", str(tmp_path / "c2.h5"), "--output", str(tmp_path / "f.csv"))
        assert failed.exit_code != 0
        assert SECRET not in failed.output, failed.output
        bad = _run("classify", str(cat), "--model", str(ckpt), "--survey",
                   _spec(fake, "&timeout=0"), "--output", str(tmp_path / "b.csv"))
        assert bad.exit_code != 0 and SECRET not in bad.output, bad.output
    assert _files_holding(tmp_path, SECRET) == []
