"""The `sdss` survey declares typed cutout options (its retry settings are `RETRY_OPTIONS`, as
every survey's): a bad value is one line naming the option and what is allowed, before any
request. It declared them untyped: ``retries=abc`` was a message without the option's name,
``retries=-1`` one about ``attempts``, and ``retries=1.5`` was taken as 1."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_sdss import fake_sdss_fixture  # noqa: F401  (the loopback SDSS server fixture)
from test_classify import _sdss_checkpoint, read_csv, run_cli


def _catalog(tmp: Path, fake) -> Path:
    """The fake sky's galaxies as a catalog (frames are cached under GALMERGE_DATA: set it to a
    folder of the test's own)."""
    cat = tmp / "c.csv"
    cat.write_text("objID,ra,dec\n" + "".join(f"{i},{x.ra},{x.dec}\n"
                                               for i, x in enumerate(fake.galaxies)))
    return cat


@pytest.mark.parametrize(("query", "words"), [
    ("workers=0", "sdss: option workers must be >= 1, got 0"),
    ("workers=many", "option 'workers' of sdss must be int, got 'many'; valid: int >= 1"),
    ("retries=-1", "sdss: option retries must be >= 0, got -1"),
    ("retries=abc", "option 'retries' of sdss must be int, got 'abc'; valid: int >= 0"),
    ("retries=1.5", "option 'retries' of sdss must be int, got 1.5; valid: int >= 0"),
    ("attempts=0", "sdss: option attempts must be >= 1, got 0"),
    ("jitter=2", "sdss: option jitter must be >= 0 and <= 1, got 2"),
    ("memory_frames=-1", "sdss: option memory_frames must be >= 0, got -1"),
    ("resolve_batch=0", "sdss: option resolve_batch must be >= 1, got 0"),
    ("max_edge_fraction=1.5", "sdss: option max_edge_fraction must be >= 0 and <= 1, got 1.5"),
    ("check_footprint=maybe", "option 'check_footprint' of sdss must be bool, got 'maybe'"),
])
def test_a_bad_sdss_option_is_one_line_before_any_request(fake_sdss, tmp_path,  # noqa: F811
                                                          monkeypatch, query, words):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GALMERGE_DATA", str(tmp_path / "data"))  # no frames cached before
    ckpt = _sdss_checkpoint(tmp_path / "best.pt")
    res = run_cli("classify", str(_catalog(tmp_path, fake_sdss)), "--model", str(ckpt),
                  "--quiet", "--survey", f"sdss?{query}", "--cache", str(tmp_path / "c.h5"))
    assert res.exit_code != 0
    assert words in res.output, res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
    assert fake_sdss.count() == 0  # refused before any request


def test_a_bad_budget_variable_is_named_as_the_variable(fake_sdss, tmp_path,  # noqa: F811
                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GALMERGE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("GALMERGE_MAX_FAILED_REQUESTS", "abc")
    ckpt = _sdss_checkpoint(tmp_path / "best.pt")
    res = run_cli("classify", str(_catalog(tmp_path, fake_sdss)), "--model", str(ckpt),
                  "--quiet", "--survey", "sdss", "--cache", str(tmp_path / "c.h5"))
    assert res.exit_code != 0 and len(res.output.strip().splitlines()) == 1, res.output
    assert "environment variable GALMERGE_MAX_FAILED_REQUESTS must be" in res.output
    assert "survey option" not in res.output and fake_sdss.count() == 0


def test_retries_reach_the_service(fake_sdss, tmp_path, monkeypatch):  # noqa: F811
    """``retries=0``: one try per request, so a frame failing once is a failed row."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GALMERGE_DATA", str(tmp_path / "data"))  # no frames cached before
    ckpt = _sdss_checkpoint(tmp_path / "best.pt")
    cat = _catalog(tmp_path, fake_sdss)
    fake_sdss.add_fault("frame-r-001000", "500", times=1)
    res = run_cli("classify", str(cat), "--model", str(ckpt), "--quiet", "--survey",
                  "sdss?retries=0&backoff=0", "--cache", str(tmp_path / "c.h5"))
    assert res.exit_code == 0, res.output
    statuses = [r[-1] for r in read_csv(tmp_path / "c_galmerge.csv")[1]]
    assert any(s.startswith("fetch-failed") for s in statuses), statuses
