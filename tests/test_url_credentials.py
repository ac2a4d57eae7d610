"""URL credentials in what galmerge prints and records: one form, ``scheme://***@host``.

`galmerge.io.provenance.hide_userinfo` is the one function that hides them (a command line in
env.json, a survey spec, an error line, a tune study's storage.json); `galmerge.shown_url`
shows one URL for a message with it, its query cut to ``?...``.
"""

from __future__ import annotations

import sys

import pytest

import galmerge


@pytest.mark.parametrize(("given", "recorded"), [
    # a password may hold '&' or '@' (RFC 3986 sub-delims; urlsplit takes the last '@'):
    # hidden whole, as the password-only form hid '&' before
    ("postgresql://me:p&ss@db.example:5432/studies", "postgresql://***@db.example:5432/studies"),
    ("postgresql://me:p@ss@db.example/studies", "postgresql://***@db.example/studies"),
    ("sdss?sas_url=http://al:pw@127.0.0.1:9/sas&workers=2",
     "sdss?sas_url=http://***@127.0.0.1:9/sas&workers=2"),
    ("https://token@host/api", "https://***@host/api"),
    # what SQLAlchemy and urlsplit take unencoded in a password: '#', '?', quotes, '<', '>'
    ("postgresql://me:s3cr#t@127.0.0.1:1/optuna", "postgresql://***@127.0.0.1:1/optuna"),
    ("https://al:pa'ss@host/api", "https://***@host/api"),
    ('http://me:a"b<c>d?e@host/x', "http://***@host/x"),
    # no user info: left as it is, an '@' in a path or a query included
    ("http://127.0.0.1:9/a@b?mail=me@example.org", "http://127.0.0.1:9/a@b?mail=me@example.org"),
    ("me@example.org", "me@example.org"),
])
def test_env_json_records_every_url_of_the_command_line_without_its_user_info(monkeypatch,
                                                                               given, recorded):
    from galmerge.config.rundir import environment

    monkeypatch.setattr(sys, "argv", ["galmerge", "tune", "--storage", given])
    assert environment("cpu")["argv"] == ["galmerge", "tune", "--storage", recorded]


@pytest.mark.parametrize(("url", "shown"), [
    ("https://me:s3cret@host.example:8443/sas/x.fits?X-Goog-Signature=abc#f",
     "https://***@host.example:8443/sas/x.fits?..."),
    ("http://me:p&ss@127.0.0.1/api", "http://***@127.0.0.1/api"),
    ("http://127.0.0.1:9/cutout", "http://127.0.0.1:9/cutout"),
    # a '#' or '?' in the password ends urlsplit's netloc: hidden before the split
    ("postgresql://me:s3cr#t@127.0.0.1:1/optuna", "postgresql://***@127.0.0.1:1/optuna"),
    ("https://al:pa?ss@host/api?sig=1", "https://***@host/api?..."),
])
def test_shown_url_hides_user_info_as_everything_else_does_and_cuts_the_query(url, shown):
    """shown_url dropped user info silently (``http://host``) where every other message and
    record shows ``http://***@host``: one form now, from one function."""
    from galmerge.io.provenance import hide_userinfo

    assert galmerge.shown_url(url) == shown
    assert hide_userinfo(url).split("?")[0] == shown.split("?")[0]


@pytest.mark.parametrize(("value", "base"), [
    (" https://host.example/sas/ ", "https://host.example/sas"),
    ("http://me:pw@127.0.0.1:8080", "http://me:pw@127.0.0.1:8080"),  # user info is the caller's
])
def test_check_service_url_returns_the_base_it_checked(value, base):
    assert galmerge.check_service_url(value, "X_URL", "https://example.org") == base


@pytest.mark.parametrize("value", ["notaurl", "ftp://me:s3cret@host/x", "https://", "http://[::1",
                                   "http://host:99999", "http://host:0", "http://host:port"])
def test_check_service_url_refuses_in_one_line_naming_where_it_came_from(value):
    with pytest.raises(galmerge.GalmergeError) as refused:
        galmerge.check_service_url(value, "X_URL", "https://example.org")
    line = str(refused.value)
    assert line.startswith("X_URL = '") and "give an http(s) address with a host" in line
    assert "e.g. https://example.org, or unset it" in line
    assert "s3cret" not in line and "\n" not in line


def test_a_spec_is_hidden_option_by_option_so_another_options_at_sign_is_no_user_info():
    """`contact=me@uni.edu` beside a URL without user info is no credential: the spec is
    neither changed nor refused (a free-text pass over the whole spec took
    ``sky.example.org:8080&contact=me`` for user info and refused a valid spec)."""
    from galmerge.config.rundir import refuse_credentials
    from galmerge.io.provenance import shown_spec

    spec = "sdss:cat.csv?skyserver_url=http://sky.example.org:8080&contact=me@uni.edu"
    assert shown_spec(spec) == spec
    refuse_credentials(spec, "--source")  # no error
    with pytest.raises(galmerge.GalmergeError) as refused:
        refuse_credentials("sdss?sas_url=http://me:p%23w@h/sas&contact=me@uni.edu", "--source")
    line = str(refused.value)
    assert "http://***@h/sas" in line and "p%23w" not in line and "p#w" not in line
    # the fix it names shows where the credentials go, not a hidden example
    assert "https://USER:PASSWORD@host/sas" in line


def test_tune_storage_with_a_hash_in_its_password_is_never_printed_or_recorded(tmp_path):
    """`--storage postgresql://me:s3cr#t@...` (SQLAlchemy reads '#' unencoded): the one-line
    error and the study folder's records hold no password."""
    import json

    from click.testing import CliRunner

    from galmerge.cli import cli

    study = tmp_path / "study"
    result = CliRunner().invoke(cli, [
        "tune", "--source", "synthetic:illustris?n=40", "--target", "synthetic:sdss?n=40",
        "--strategy", "none", "--n-trials", "1", "--study-dir", str(study),
        "--storage", "postgresql://me:s3cr#t@127.0.0.1:1/optuna"])
    assert result.exit_code != 0
    written = result.output + "".join(
        p.read_text(errors="replace") for p in study.rglob("*") if p.is_file())
    assert "s3cr" not in written, written
    assert "postgresql://***@127.0.0.1:1/optuna" in result.output
    assert "postgresql://USER:PASSWORD@HOST/DB" in result.output  # the example stays readable
    for record in study.rglob("storage.json"):
        assert "s3cr" not in json.dumps(json.loads(record.read_text()))
