"""What galmerge resumes from must be writable by nobody but the user
(`galmerge.io.private.check_private`): `train --resume`'s run folder, config.toml and last.pt
(before, any of them was accepted) and classify's parts folder (before, a folder writable by a
group was accepted). Through the CLI, on real runs."""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_segments import _interrupted_run, env  # noqa: F401  (fixture)
from test_train_cli import BASE, toys  # noqa: F401  (fixture)

from galmerge.cli import cli


def _foreign_group() -> int | None:
    """A group this test may give a file to that is not the user's own (primary) group."""
    mine = pwd.getpwuid(os.geteuid()).pw_gid
    gids = [g.gr_gid for g in grp.getgrall()] if os.geteuid() == 0 else os.getgroups()
    return next((gid for gid in gids if gid != mine), None)


def _refused(args: list[str], path: Path, who: str) -> None:
    res = CliRunner().invoke(cli, args)
    assert res.exit_code != 0, res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert f"{path} is writable by {who}" in res.output, res.output
    assert f"chmod go-w {path}" in res.output, res.output


def _trained(tmp_path: Path) -> Path:
    """A finished tiny run in ``tmp_path/r``."""
    run = tmp_path / "r"
    assert CliRunner().invoke(cli, [*BASE, "--strategy", "meangap", "--run-dir",
                                    str(run)]).exit_code == 0
    return run


def _group_writable(run: Path, gid: int) -> None:
    """The run folder, config.toml and last.pt given to group ``gid``, which may write them."""
    for path in (run, run / "config.toml", run / "last.pt"):
        os.chown(path, -1, gid)
        path.chmod(path.stat().st_mode | 0o020)


def test_resume_refuses_a_run_others_may_write_to(toys, tmp_path):  # noqa: F811
    run = _trained(tmp_path)
    resume = ["train", "--resume", str(run), "--quiet"]
    for path, mode in ((run, 0o777), (run / "last.pt", 0o666), (run / "config.toml", 0o646)):
        before = path.stat().st_mode
        path.chmod(mode)
        _refused(resume, path, "every user")
        path.chmod(before)
    gid = _foreign_group()
    if gid is not None:  # a shared group: another member could plant a checkpoint
        os.chown(run / "last.pt", -1, gid)
        (run / "last.pt").chmod(0o664)
        _refused(resume, run / "last.pt", f"its group (gid {gid})")
        (run / "last.pt").chmod(0o644)
    if os.geteuid() == 0:  # only root can give a file away
        os.chown(run / "last.pt", 4242, -1)
        res = CliRunner().invoke(cli, resume)
        assert res.exit_code != 0 and "belongs to another user (uid 4242)" in res.output
        os.chown(run / "last.pt", 0, -1)
    res = CliRunner().invoke(cli, resume)  # after `chmod go-w`: resumed
    assert res.exit_code == 0, res.output


def test_a_filesystem_without_permissions_resumes_when_the_user_says_so(
        toys, tmp_path, monkeypatch):  # noqa: F811
    """CIFS or WSL's /mnt/c show every file as 0777 and `chmod` changes nothing there:
    GALMERGE_ALLOW_WRITABLE_RESUME=1 (named by the refusal) accepts such a run."""
    run = _trained(tmp_path)
    for path in (run, run / "config.toml", run / "last.pt"):
        path.chmod(0o777)
    resume = ["train", "--resume", str(run), "--quiet"]
    res = CliRunner().invoke(cli, resume)
    assert res.exit_code != 0 and "set GALMERGE_ALLOW_WRITABLE_RESUME=1" in res.output
    monkeypatch.setenv("GALMERGE_ALLOW_WRITABLE_RESUME", "1")
    res = CliRunner().invoke(cli, resume)
    assert res.exit_code == 0, res.output


def test_a_private_group_may_write(toys, tmp_path):  # noqa: F811
    """A umask of 002 under the user-private-group convention makes runs group-writable: that
    group is the user's alone, so such a run still resumes."""
    me = pwd.getpwuid(os.geteuid())
    group = grp.getgrgid(me.pw_gid)
    if group.gr_name != me.pw_name or set(group.gr_mem) - {me.pw_name}:
        pytest.skip("the user's primary group is not a private one")
    run = _trained(tmp_path)
    _group_writable(run, me.pw_gid)
    res = CliRunner().invoke(cli, ["train", "--resume", str(run), "--quiet"])
    assert res.exit_code == 0, res.output


def test_a_shared_primary_group_is_trusted_only_when_the_user_says_so(
        toys, tmp_path, monkeypatch):  # noqa: F811
    """A umask of 002 with a primary group that others belong to (SUSE's `users`, HPC
    accounts): galmerge makes its runs group-writable there, and every member of that group
    could change them, so resuming needs GALMERGE_ALLOW_WRITABLE_RESUME=1."""
    me = pwd.getpwuid(os.geteuid())
    real = grp.getgrgid

    def shared(gid: int):  # the primary group as a shared one, whatever it is here
        group = real(gid)
        if gid != me.pw_gid:
            return group
        return grp.struct_group(("users", group.gr_passwd, gid, [me.pw_name, "alice"]))

    monkeypatch.setattr(grp, "getgrgid", shared)
    run = _trained(tmp_path)
    _group_writable(run, me.pw_gid)
    resume = ["train", "--resume", str(run), "--quiet"]
    monkeypatch.setattr("galmerge.io.atomic.FILE_MODE", 0o664)  # a process under umask 002
    _refused(resume, run, f"its group (gid {me.pw_gid})")
    monkeypatch.setenv("GALMERGE_ALLOW_WRITABLE_RESUME", "1")
    res = CliRunner().invoke(cli, resume)
    assert res.exit_code == 0, res.output


def test_classify_refuses_a_parts_folder_its_group_may_write_to(env):  # noqa: F811
    gid = _foreign_group()
    if gid is None:
        pytest.skip("no group other than the user's own to give the folder to")
    tmp, _, _ = env
    args, folder = _interrupted_run(tmp)
    parts = folder.parent
    os.chown(parts, -1, gid)
    parts.chmod(0o770)
    _refused(args, parts, f"its group (gid {gid})")
    parts.chmod(0o700)
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
