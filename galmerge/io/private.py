"""What galmerge resumes from (a run's ``last.pt`` and folder, classify's result segments) must be
the user's own and writable by nobody else.

It is read as data only (no pickle), but a checkpoint or results planted by someone else would
still be continued as if computed by this user. A group write bit counts unless the group is the
user's private group (the user-private-group convention behind a umask of 002: a group of the
user's name, the user's primary group, no other members listed). A folder shared on purpose (a
group-writable umask with a shared group, a setgid project folder) or on a filesystem without
Unix permissions is accepted only when the user says so: ``GALMERGE_ALLOW_WRITABLE_RESUME=1``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from galmerge.errors import GalmergeError

#: "1": accept what others may write (a group-shared folder, a filesystem that shows every file
#: as 0777); the owner check stays
ALLOW_WRITABLE_ENV = "GALMERGE_ALLOW_WRITABLE_RESUME"


def _own_group(gid: int, uid: int) -> bool:
    """Whether the group may write what galmerge resumes from: only the user's private group
    (a shared group's other members could plant what the run continues)."""
    try:
        import grp
        import pwd

        user = pwd.getpwuid(uid)
        group = grp.getgrgid(gid)
    except (ImportError, KeyError):
        return False
    return (gid == user.pw_gid and group.gr_name == user.pw_name
            and set(group.gr_mem) <= {user.pw_name})


def check_private(path: str | os.PathLike[str], elsewhere: str) -> None:
    """A one-line `GalmergeError` if ``path`` exists and another user owns it (a link: the link,
    or the file it names when the link is the user's), or others, or a group other than the
    user's private group, may write to it. ``elsewhere``: the other way out the message offers
    (e.g. "pass another --output")."""
    p = Path(path)
    geteuid = getattr(os, "geteuid", None)
    if geteuid is None:  # no POSIX owners (Windows)
        return
    try:
        link = os.lstat(p)
        st = os.stat(p)
    except FileNotFoundError:
        return
    me = geteuid()
    owner = st.st_uid if link.st_uid == me else link.st_uid
    if owner != me:
        raise GalmergeError(
            f"{p} belongs to another user (uid {owner}); galmerge resumes only from files of "
            f"its own: remove it (or {elsewhere}) and run again")
    if os.environ.get(ALLOW_WRITABLE_ENV, "").strip() == "1":
        return  # a filesystem without Unix permissions (CIFS, WSL's /mnt/c): the user says so
    if st.st_mode & stat.S_IWOTH:
        who = "every user"
    elif st.st_mode & stat.S_IWGRP and not _own_group(st.st_gid, me):
        who = f"its group (gid {st.st_gid})"
    else:
        return
    raise GalmergeError(
        f"{p} is writable by {who}, so what it holds cannot be trusted; `chmod go-w {p}` if "
        f"nobody else wrote there (else remove it, or {elsewhere}) and run again; to trust "
        f"a folder shared on purpose or a filesystem without Unix permissions (CIFS, WSL's "
        f"/mnt/c), set {ALLOW_WRITABLE_ENV}=1")
