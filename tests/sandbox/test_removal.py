"""remove_tree on trees a hostile job could leave: thousands of levels deep, a hundred
thousand entries, folders of mode 000 and of another user, immutable files, a mount
point, links to outside. It removes what it can, moves the rest aside, reports, never
raises, never follows a link, and holds a bounded number of descriptors.

The trees are built on a tmpfs of their own where root may mount one (this machine's
disk is shared and slow to delete folders from; tmpfs has immutable files too)."""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from edgeai.sandbox.removal import MAX_PROBLEMS, remove_tree
from tests.conftest import reachable_tmp

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    """A folder for trees: a private tmpfs when we may mount one, else a temp folder."""
    root = tmp_path_factory.mktemp("trees")
    mounted = os.getuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512m,mode=0755", "tmpfs", str(root)],
        capture_output=True).returncode == 0
    yield root
    if mounted:
        subprocess.run(["chattr", "-R", "-i", str(root)], capture_output=True)
        subprocess.run(["umount", "-l", str(root)], capture_output=True)


@pytest.fixture
def place(disk, request):
    """A fresh folder on ``disk`` for one test."""
    folder = disk / request.node.name.replace("[", "-").replace("]", "")
    folder.mkdir()
    return folder


def deep_tree(root: Path, depth: int) -> Path:
    """A chain of ``depth`` folders, each holding a file, made through descriptors (a
    path that long is more than PATH_MAX)."""
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir("d", dir_fd=fd)
        os.close(os.open("f", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(fd)
    return root


def chattr(flag: str, *paths: Path) -> None:
    done = subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"chattr {flag} is not possible here: {done.stderr.strip()}")


def test_a_folder_3000_deep_defeats_rmtree_and_not_remove_tree(place):
    """The live payload: shutil.rmtree(ignore_errors=True) raises RecursionError on it
    (ignore_errors does not cover that), which failed jobs and then stopped gunicorn."""
    tree = deep_tree(place / "slot", 3000)
    with pytest.raises(RecursionError):
        shutil.rmtree(tree, ignore_errors=True)
    removal = remove_tree(tree)
    assert removal.removed and removal.problems == [] and not tree.exists()


def test_ten_thousand_levels_with_a_dozen_descriptors_and_no_recursion(place):
    """In a process that may hold 16 descriptors and recurse 200 deep, a tree 10,000
    levels deep goes; under the same limits rmtree (one descriptor per level) runs out
    of descriptors and, told to ignore errors, silently leaves the tree (control)."""
    tree = deep_tree(place / "slot", 10_000)
    program = textwrap.dedent(f"""
        import os, resource, shutil, sys
        sys.setrecursionlimit(200)
        from edgeai.sandbox.removal import remove_tree
        resource.setrlimit(resource.RLIMIT_NOFILE, (16, 16))
        shutil.rmtree({str(tree)!r}, ignore_errors=True)
        print("rmtree left it:", os.path.exists({str(tree)!r} + "/d/d/d/d/d/d/d/d/d/d/d/d"))
        print(remove_tree({str(tree)!r}))
    """)
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert done.stdout.splitlines() == [
        "rmtree left it: True", "Removal(removed=True, moved_to=None, problems=[])"], done
    assert not tree.exists()


def test_a_hundred_thousand_entries(place):
    tree = place / "wide"
    tree.mkdir()
    fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    for index in range(100_000):
        os.close(os.open(f"f{index}", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
    os.close(fd)
    assert remove_tree(tree).removed and not tree.exists()


def test_links_are_removed_as_links_and_never_followed(place):
    outside = place / "server"
    (outside / "keep").mkdir(parents=True)
    secret = outside / "keep" / "edgeai.sqlite3"
    secret.write_text("every client's keys")
    tree = place / "slot"
    (tree / "out").mkdir(parents=True)
    os.symlink(outside, tree / "out" / "data")            # a folder outside
    os.symlink(secret, tree / "out" / "db")               # a file outside
    os.link(secret, tree / "out" / "hard")                # a second name of it
    os.symlink("/", tree / "root")
    os.symlink(tree / "loop", tree / "loop")
    # The payload is live: through the tree, the server's file is there to delete.
    assert (tree / "out" / "data" / "keep" / "edgeai.sqlite3").read_text() == \
        "every client's keys"
    removal = remove_tree(tree)
    assert removal.removed and removal.problems == [] and not tree.exists()
    assert secret.read_text() == "every client's keys" and os.stat(secret).st_nlink == 1
    assert sorted(p.name for p in outside.rglob("*")) == ["edgeai.sqlite3", "keep"]
    # A link at the path itself: the link goes, its target stays.
    os.symlink(outside, place / "alias")
    assert remove_tree(place / "alias").removed and secret.exists()


def test_folders_of_mode_000_and_of_another_user(place):
    nobody = pwd.getpwnam("nobody")
    tree = place / "slot"
    (tree / "a" / "b" / "c").mkdir(parents=True)
    (tree / "a" / "b" / "c" / "f").write_text("x")
    for folder in (tree / "a", tree / "a" / "b", tree / "a" / "b" / "c"):
        os.chown(folder, nobody.pw_uid, nobody.pw_gid)
    for folder in (tree / "a" / "b" / "c", tree / "a" / "b", tree / "a"):
        os.chmod(folder, 0)
    removal = remove_tree(tree)
    assert removal.removed and removal.problems == [] and not tree.exists()


def test_as_another_user_its_own_locked_folders_go_and_what_is_not_its_is_reported(place):
    """Run as nobody: its own folders of mode 000 or 0500 are opened up and removed; a
    file in a folder of root's cannot be, nor (here) moved aside: reported, not raised."""
    nobody = pwd.getpwnam("nobody")
    reachable_tmp(place)
    tree = place / "slot"
    for folder in ("locked/inner", "readonly/inner", "roots/inner"):
        (tree / folder).mkdir(parents=True)
        (tree / folder / "f").write_text("x")
    for path in [tree, *tree.rglob("*")]:
        if "roots" not in path.parts:
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
    os.chown(tree / "roots", nobody.pw_uid, nobody.pw_gid)  # only its content is root's
    os.chmod(tree / "locked", 0)
    os.chmod(tree / "readonly", 0o500)
    quarantine = place / "quarantine"  # root's: nobody cannot move anything there
    quarantine.mkdir()
    # As nobody, in a forked copy of this process (nobody cannot reach this interpreter
    # under /root to start a new one).
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            os.write(write, repr(remove_tree(tree, quarantine=quarantine)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        said = pipe.read()
    os.waitpid(pid, 0)
    assert not (tree / "locked").exists() and not (tree / "readonly").exists(), said
    assert (tree / "roots" / "inner" / "f").exists(), said  # root's: not nobody's
    assert said.startswith("Removal(removed=False, moved_to=None, problems=[")
    assert "slot/roots/inner/f: cannot remove (Permission denied)" in said
    assert f"cannot move it aside into {quarantine} (Permission denied)" in said


def test_what_cannot_be_removed_is_moved_aside_and_reported(place):
    tree = place / "slot"
    (tree / "out" / "sub").mkdir(parents=True)
    (tree / "out" / "sub" / "stuck").write_text("immutable")
    (tree / "out" / "sub" / "fine").write_text("x")
    (tree / "frozen").mkdir()
    (tree / "frozen" / "f").write_text("x")
    (tree / "other").mkdir()
    (tree / "other" / "g").write_text("x")
    chattr("+i", tree / "out" / "sub" / "stuck", tree / "frozen")
    with pytest.raises(PermissionError):  # the payload is live
        os.unlink(tree / "out" / "sub" / "stuck")
    quarantine = place / "quarantine"
    removal = remove_tree(tree, quarantine=quarantine)
    chattr("-i", *quarantine.rglob("stuck"), *quarantine.rglob("frozen"))
    assert not removal.removed and not tree.exists()
    assert removal.moved_to and Path(removal.moved_to).parent == quarantine
    moved = Path(removal.moved_to)
    assert sorted(str(p.relative_to(moved)) for p in moved.rglob("*")) == [
        "frozen", "frozen/f", "out", "out/sub", "out/sub/stuck"]
    assert sorted(removal.problems) == [
        "slot/frozen/f: cannot remove (Operation not permitted)",
        "slot/out/sub/stuck: cannot remove (Operation not permitted)"]


def test_without_a_quarantine_the_remains_stay_and_are_reported(place):
    tree = place / "slot"
    tree.mkdir()
    names = [tree / f"f{index}" for index in range(50)]
    for name in names:
        name.write_text("x")
    chattr("+i", *names)
    removal = remove_tree(tree)
    chattr("-i", *names)
    assert not removal.removed and removal.moved_to is None
    assert len(removal.problems) == MAX_PROBLEMS + 1
    assert removal.problems[-1] == f"... and {50 - MAX_PROBLEMS} more"


def test_a_mount_point_inside_is_left_alone(place):
    tree = place / "slot"
    mount = tree / "inside" / "mnt"
    mount.mkdir(parents=True)
    (tree / "inside" / "f").write_text("x")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount here")
    try:
        (mount / "theirs").write_text("another file system's")
        quarantine = place / "quarantine"
        removal = remove_tree(tree, quarantine=quarantine)
        assert not removal.removed and removal.moved_to and not tree.exists()
        assert removal.problems == [
            "slot/inside/mnt: another file system is mounted here; left alone"]
        moved = Path(removal.moved_to)
        assert (moved / "inside" / "mnt" / "theirs").read_text() == "another file system's"
        assert not (moved / "inside" / "f").exists()
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
        for left in place.rglob("mnt"):
            subprocess.run(["umount", "-l", str(left)], capture_output=True)


def test_missing_files_and_races_between_removers(place):
    assert remove_tree(place / "never-made").removed
    (place / "file").write_text("x")
    assert remove_tree(place / "file").removed and not (place / "file").exists()
    tree = deep_tree(place / "shared", 300)
    for index in range(2000):
        (tree / f"f{index}").write_text("x")
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(remove_tree(tree)))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3 and all(r.removed for r in results), results
    assert not tree.exists()
