"""Unpacking a worker bundle: only plain files and folders, extracted as data."""

from __future__ import annotations

import io
import stat
import tarfile
from pathlib import Path

import pytest

from openmwaa.runtime import bundles


def _archive(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _entry(
    name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, **attrs: object
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def test_pack_and_unpack_round_trip(tmp_path: Path) -> None:
    source = tmp_path / "src" / "dags"
    (source / "sub").mkdir(parents=True)
    (source / "a.py").write_text("A")
    (source / "sub" / "b.py").write_text("B")
    target = tmp_path / "home"
    bundles.unpack(bundles.pack({"dags": source}), target)
    assert (target / "dags" / "a.py").read_text() == "A"
    assert (target / "dags" / "sub" / "b.py").read_text() == "B"


@pytest.mark.parametrize(
    "member",
    [
        (_entry("dags/link.py", tarfile.SYMTYPE, linkname="/etc/passwd"), None),
        (_entry("dags/inside.py", tarfile.SYMTYPE, linkname="a.py"), None),
        (_entry("dags/hard.py", tarfile.LNKTYPE, linkname="dags/a.py"), None),
        (_entry("/etc/openmwaa-test-evil"), b"x"),
        (_entry("dags/../../evil.py"), b"x"),
        (_entry("dags/null", tarfile.CHRTYPE, devmajor=1, devminor=3), None),
        (_entry("dags/fifo", tarfile.FIFOTYPE), None),
    ],
    ids=["symlink-out", "symlink-in", "hardlink", "absolute", "dotdot", "device", "fifo"],
)
def test_links_absolute_paths_and_devices_are_refused(
    tmp_path: Path, member: tuple[tarfile.TarInfo, bytes | None]
) -> None:
    data = _archive(
        (_entry("dags", tarfile.DIRTYPE, 0o755), None), (_entry("dags/a.py"), b"A"), member
    )
    with pytest.raises(ValueError, match="refusing"):
        bundles.unpack(data, tmp_path / "home")
    assert not (tmp_path / "home" / "dags" / "a.py").exists(), "nothing of it is applied"
    assert not Path("/etc/openmwaa-test-evil").exists()
    assert not (tmp_path / "evil.py").exists()


def test_files_are_extracted_as_data(tmp_path: Path) -> None:
    """No setuid/setgid bit and no group/other write from an archive (tarfile's data filter)."""
    data = _archive(
        (_entry("dags", tarfile.DIRTYPE, 0o777), None),
        (_entry("dags/run.sh", mode=0o6777, uid=0, gid=0, uname="root"), b"#!/bin/sh\n"),
    )
    bundles.unpack(data, tmp_path / "home")
    mode = (tmp_path / "home" / "dags" / "run.sh").stat().st_mode
    assert not mode & (stat.S_ISUID | stat.S_ISGID), oct(mode)
    assert not mode & (stat.S_IWGRP | stat.S_IWOTH), oct(mode)
