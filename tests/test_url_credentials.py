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
])
def test_shown_url_hides_user_info_as_everything_else_does_and_cuts_the_query(url, shown):
    """shown_url dropped user info silently (``http://host``) where every other message and
    record shows ``http://***@host``: one form now, from one function."""
    from galmerge.io.provenance import hide_userinfo

    assert galmerge.shown_url(url) == shown
    assert hide_userinfo(url.split("?")[0]) == shown.split("?")[0]


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
