"""The module's state_dir (where each group session's files live, freeze_at
among them): created 0700 whatever the umask; an existing one used only if
it is a real directory of root's that no one else can write."""

import os

import pytest

from .plugin_module import plugin_module


@pytest.fixture(scope="module")
def private_dir():
    with plugin_module("vmsnap") as mod:
        yield mod.private_dir


def test_created_0700_whatever_the_umask(tmp_path, private_dir):
    old = os.umask(0)
    try:
        private_dir(str(tmp_path / "run" / "vmsnap-fleet"))
    finally:
        os.umask(old)
    assert (tmp_path / "run" / "vmsnap-fleet").stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("kind", ["symlink", "world_writable", "group_writable", "others", "file"])
def test_an_unsafe_existing_state_dir_is_refused(tmp_path, private_dir, kind):
    d = tmp_path / "state"
    if kind == "symlink":
        (tmp_path / "real").mkdir(mode=0o700)
        d.symlink_to(tmp_path / "real")
    elif kind == "file":
        d.write_text("")
    else:
        d.mkdir()
        d.chmod({"world_writable": 0o1777, "group_writable": 0o770, "others": 0o700}[kind])
        if kind == "others":
            if os.geteuid() != 0:
                pytest.skip("needs root to give the directory away")
            os.chown(d, 65534, 65534)
    with pytest.raises(OSError):
        private_dir(str(d))


def test_a_safe_existing_state_dir_is_kept(tmp_path, private_dir):
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    (d / "keep").write_text("x")
    assert private_dir(str(d)) == str(d) and (d / "keep").exists()
