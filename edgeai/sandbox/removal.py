"""Removing a folder a job could have shaped, or a crash left odd, without ever failing.

A job's slot, a run's staging folder, a transaction's folder: the server deletes
them from outside, with its own privileges, and whatever is inside was possibly made
by code that wanted the deletion to hurt. :func:`remove_tree` therefore

- works from directory descriptors, one name at a time (the model is CPython's
  ``shutil._rmtree_safe_fd``): every folder is opened with ``O_NOFOLLOW |
  O_DIRECTORY`` relative to its parent's descriptor and checked with ``fstat``, so
  a symbolic link is removed as a link and never followed, and no path inside the
  tree is ever resolved;
- has no recursion and holds at most four descriptors, whatever the depth: it keeps
  the names still to visit per level (memory, not descriptors), and climbs back with
  ``..`` from the folder it is in, checking that what it reached is the folder it
  came from (device and inode), so a tree moved meanwhile stops the removal instead
  of sending it elsewhere;
- never crosses into another file system (a mount point inside the tree is left,
  and reported);
- copes with what cannot be removed (an immutable file, a folder it may not
  enter): it removes everything else, then moves the remains aside under
  ``quarantine`` (a rename on the same file system) and reports them; if even that
  fails, it reports it. It never raises for anything the tree holds.

Run as root it may enter any folder; run as another user it makes its own folders
enterable (``chmod``) when their mode stands in the way, and reports the rest.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import stat
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# Problems kept per removal (a tree of a million immutable files is one report).
MAX_PROBLEMS = 20
# A folder that is still not empty after its listing was removed is listed again at most
# this many times (something was writing into it).
PASSES = 3
# Unlinks, opens and listings per removal: however the tree changes while it is being
# removed, the removal ends.
MAX_STEPS = 50_000_000

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class Removal:
    """How a :func:`remove_tree` went: ``removed`` is True when the tree is deleted (or
    was not there); ``moved_to`` is where its remains went when they could not all be
    deleted (the path is free then too); ``problems`` says what could not be deleted and
    why (at most :data:`MAX_PROBLEMS`, then a count). Neither removed nor moved: the
    remains are still at the path."""

    removed: bool
    moved_to: str | None = None
    problems: list[str] = field(default_factory=list)


class _Problems:
    """The problems of one removal, bounded."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.more = 0

    def add(self, where: str, what: str) -> None:
        if len(self.items) < MAX_PROBLEMS:
            self.items.append(f"{where}: {what}")
        else:
            self.more += 1

    def report(self) -> list[str]:
        return self.items + ([f"... and {self.more} more"] if self.more else [])


class _Moved(Exception):
    """The tree changed under the removal in a way it cannot follow safely."""


@dataclass
class _Level:
    """One folder on the way down: its name in its parent, identity, names left to
    visit, how often it was listed, and whether something in it could not be removed
    (then it cannot be either, and listing it again would only repeat the problem)."""

    name: str
    ident: tuple[int, int]
    pending: list[str]
    passes: int = 1
    stuck: bool = False


def _why(error: OSError) -> str:
    return os.strerror(error.errno) if error.errno else str(error)


def _open_dir(dir_fd: int, name: str) -> tuple[int, os.stat_result]:
    """Open folder ``name`` below ``dir_fd`` without following a link; raises OSError
    (ENOTDIR or ELOOP when it is not a folder, EACCES when its mode forbids it and we
    could not change that)."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except PermissionError:
        if os.geteuid() == 0:
            raise
        _make_enterable(dir_fd, name)
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISDIR(info.st_mode):  # cannot happen with O_DIRECTORY; never trust
            raise NotADirectoryError(errno.ENOTDIR, "not a folder")
        return fd, info
    except BaseException:
        os.close(fd)
        raise


def _make_enterable(dir_fd: int, name: str) -> None:
    """Give our own folder ``name`` (mode 000, say) back its owner's rights, through an
    ``O_PATH`` descriptor of the folder itself (no link is followed); raises
    PermissionError when it is not ours."""
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC,
                 dir_fd=dir_fd)
    try:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid():
            raise PermissionError(errno.EACCES, "a folder of another user")
        os.chmod(f"/proc/self/fd/{fd}", 0o700)  # the descriptor's own inode
    finally:
        os.close(fd)


def _writable(dir_fd: int) -> bool:
    """Make the folder open as ``dir_fd`` writable by us if it is ours; whether it was."""
    if os.geteuid() == 0:
        return False
    try:
        if os.fstat(dir_fd).st_uid != os.geteuid():
            return False
        os.fchmod(dir_fd, 0o700)
        return True
    except OSError:
        return False


class _Walk:
    """One removal's state: the way down, the descriptor of the folder it is in, the
    problems, the steps left."""

    def __init__(self, problems: _Problems):
        self.problems = problems
        self.levels: list[_Level] = []
        self.steps = MAX_STEPS

    def where(self, name: str | None = None) -> str:
        """The place of ``name`` (or of the current folder) for a problem: the last few
        names of the way down, quoted, and how deep it is."""
        names = [level.name for level in self.levels] + ([name] if name is not None else [])
        shown = "/".join(repr(part)[1:-1] for part in names[-4:])
        return (f".../{shown} (depth {len(names)})" if len(names) > 4 else shown) or "."

    def stuck(self, name: str, what: str) -> None:
        """Entry ``name`` of the current folder stays: report it, mark the folder."""
        self.problems.add(self.where(name), what)
        if self.levels:
            self.levels[-1].stuck = True

    def step(self) -> None:
        self.steps -= 1
        if self.steps < 0:
            raise _Moved(f"more than {MAX_STEPS} steps: something keeps adding to the tree")

    def remove_folder(self, parent_fd: int, name: str) -> None:
        """Remove folder ``name`` below ``parent_fd`` and everything in it, as far as it
        can; what it cannot remove is added to the problems. Raises _Moved."""
        try:
            fd, info = _open_dir(parent_fd, name)
        except FileNotFoundError:
            return
        except OSError as error:
            self.problems.add(self.where(name), f"cannot open ({_why(error)})")
            return
        device = info.st_dev
        try:
            self.levels.append(_Level(name, (info.st_dev, info.st_ino), os.listdir(fd)))
        except OSError as error:
            os.close(fd)
            self.problems.add(self.where(name), f"cannot list ({_why(error)})")
            return
        try:
            self._walk(fd, parent_fd, device)
        finally:
            self.levels.clear()

    def _walk(self, fd: int, top_parent_fd: int, device: int) -> None:
        """Empty and remove every level on :attr:`levels`, starting in ``fd`` (the
        deepest); on return no descriptor of the walk is open."""
        try:
            while self.levels:
                self.step()
                level = self.levels[-1]
                if level.pending:
                    child = self._visit(fd, level.pending.pop(), device)
                    if child is not None:
                        os.close(fd)
                        fd = child
                    continue
                fd = self._leave(fd, top_parent_fd)
        finally:
            if fd != top_parent_fd and fd >= 0:
                os.close(fd)

    def _visit(self, fd: int, name: str, device: int) -> int | None:
        """Remove entry ``name`` of the folder open as ``fd``; a folder is entered
        instead (its descriptor returned, its level pushed)."""
        for attempt in (1, 2):
            try:
                os.unlink(name, dir_fd=fd)  # a file, a link (never its target), a socket
                return None
            except FileNotFoundError:
                return None
            except IsADirectoryError:
                break
            except PermissionError as error:
                if attempt == 1 and error.errno == errno.EACCES and _writable(fd):
                    continue
                if _is_folder(fd, name):  # its content may go even if it cannot
                    break
                self.stuck(name, f"cannot remove ({_why(error)})")
                return None
            except OSError as error:
                self.stuck(name, f"cannot remove ({_why(error)})")
                return None
        try:
            child, info = _open_dir(fd, name)
        except FileNotFoundError:
            return None
        except OSError as error:
            if error.errno in (errno.ENOTDIR, errno.ELOOP):
                # Swapped for a file or a link since the unlink: remove it as one.
                try:
                    os.unlink(name, dir_fd=fd)
                    return None
                except OSError:
                    pass
            self.stuck(name, f"cannot open ({_why(error)})")
            return None
        if info.st_dev != device:
            os.close(child)
            self.stuck(name, "another file system is mounted here; left alone")
            return None
        try:
            names = os.listdir(child)
        except OSError as error:
            os.close(child)
            self.stuck(name, f"cannot list ({_why(error)})")
            return None
        self.levels.append(_Level(name, (info.st_dev, info.st_ino), names))
        return child

    def _leave(self, fd: int, top_parent_fd: int) -> int:
        """The deepest level is empty: climb to its parent (checked) and remove it.
        Returns the descriptor of the folder the walk is in now (``top_parent_fd``,
        not ours to close, once the top is left)."""
        level = self.levels[-1]
        if len(self.levels) > 1:
            try:
                up = os.open("..", _DIR_FLAGS, dir_fd=fd)
            except OSError as error:
                raise _Moved(f"{self.where()}: cannot climb back ({_why(error)}); "
                             "stopped") from None
            info = os.fstat(up)
            if (info.st_dev, info.st_ino) != self.levels[-2].ident:
                os.close(up)
                raise _Moved(f"{self.where()}: the tree was moved while it was being "
                             "removed; stopped")
        else:
            up = top_parent_fd
        os.close(fd)
        self.levels.pop()
        if level.stuck:  # what stays in it was reported; it stays too
            if self.levels:
                self.levels[-1].stuck = True
            return up
        try:
            os.rmdir(level.name, dir_fd=up)
        except FileNotFoundError:
            pass
        except OSError as error:
            retry = error.errno == errno.ENOTEMPTY and level.passes < PASSES
            if not retry and error.errno == errno.EACCES and _writable(up):
                retry = True
            if retry:
                return self._reenter(up, level, top_parent_fd)
            self.stuck(level.name, f"cannot remove ({_why(error)})")
        return up

    def _reenter(self, up: int, level: _Level, top_parent_fd: int) -> int:
        """List a folder again that was not empty when it should have been."""
        try:
            fd, info = _open_dir(up, level.name)
        except FileNotFoundError:
            return up
        except OSError as error:
            self.stuck(level.name, f"cannot open ({_why(error)})")
            return up
        if (info.st_dev, info.st_ino) != level.ident:
            os.close(fd)
            self.stuck(level.name, "replaced while it was being removed")
            return up
        try:
            names = os.listdir(fd)
        except OSError as error:
            os.close(fd)
            self.stuck(level.name, f"cannot list ({_why(error)})")
            return up
        if up != top_parent_fd:
            os.close(up)
        self.levels.append(_Level(level.name, level.ident, names, level.passes + 1))
        return fd


def _is_folder(dir_fd: int, name: str) -> bool:
    """Whether ``name`` below ``dir_fd`` is a folder (a link to one is not)."""
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False
    except OSError:
        return True


def _move_aside(parent_fd: int, name: str, quarantine: str, problems: _Problems) -> str | None:
    """Rename ``name`` (below ``parent_fd``) into ``quarantine``; the new path, or None."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:80] or "tree"
    target = f"{safe}-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(4)}"
    try:
        os.makedirs(quarantine, mode=0o700, exist_ok=True)
        quarantine_fd = os.open(quarantine, _DIR_FLAGS)
    except OSError as error:
        problems.add(quarantine, f"cannot use the quarantine folder ({_why(error)})")
        return None
    try:
        os.rename(name, target, src_dir_fd=parent_fd, dst_dir_fd=quarantine_fd)
    except OSError as error:
        problems.add(".", f"cannot move it aside into {quarantine} ({_why(error)})")
        return None
    finally:
        os.close(quarantine_fd)
    return os.path.join(quarantine, target)


def remove_tree(path: str | os.PathLike[str], *,
                quarantine: str | os.PathLike[str] | None = None) -> Removal:
    """Delete ``path`` and everything below it without following a link, leaving the
    file system, recursing, or running out of descriptors (see the module docstring).

    A link at ``path`` is removed as a link; a missing ``path`` is already removed.
    What cannot be deleted stays where it is and is reported; with ``quarantine`` (a
    folder on the same file system, made if missing) the remains are then moved
    there as a whole and reported. Never raises for anything the tree holds: every
    failure is in the returned :class:`Removal`'s ``problems``.
    """
    problems = _Problems()
    parent, name = os.path.split(os.path.abspath(os.fspath(path)))
    try:
        parent_fd = os.open(parent or "/", _DIR_FLAGS & ~os.O_NOFOLLOW)
    except FileNotFoundError:
        return Removal(removed=True)
    except OSError as error:
        return Removal(removed=False, problems=[f"{parent}: cannot open ({_why(error)})"])
    try:
        try:
            os.unlink(name, dir_fd=parent_fd)  # a file or a link: nothing to walk
        except FileNotFoundError:
            return Removal(removed=True)
        except IsADirectoryError:
            _Walk(problems).remove_folder(parent_fd, name)
        except OSError as error:
            if _is_folder(parent_fd, name):  # its content may go even if it cannot
                _Walk(problems).remove_folder(parent_fd, name)
            else:
                problems.add(".", f"cannot remove ({_why(error)})")
        if not _exists(parent_fd, name):
            return Removal(removed=True, problems=problems.report())
        moved = _move_aside(parent_fd, name, os.fspath(quarantine), problems) \
            if quarantine is not None else None
        removal = Removal(removed=False, moved_to=moved, problems=problems.report())
    except _Moved as stop:
        problems.add(".", str(stop))
        removal = Removal(removed=not _exists(parent_fd, name), problems=problems.report())
    except Exception as error:  # the contract: never raise for what a tree holds
        log.exception("removing %s", path)
        problems.add(".", f"stopped: {type(error).__name__}: {error}")
        removal = Removal(removed=False, problems=problems.report())
    finally:
        os.close(parent_fd)
    if removal.problems:
        log.warning("removing %s: %s%s", path, "; ".join(removal.problems),
                    f" (moved to {removal.moved_to})" if removal.moved_to else "")
    return removal
