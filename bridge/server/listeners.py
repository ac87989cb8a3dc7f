"""Listening sockets: loopback TCP and a Unix socket with a file mode and group.

Sockets are bound here (not by aiohttp) so that the real port of ``:0`` is
known, the Unix socket file never has a wider mode than configured, a stale
socket file from a crashed run is replaced, and a socket another live process
is serving is never stolen.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import socket
import stat
from typing import Final

from bridge.errors import BridgeError, ConfigError

#: sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_UNIX_PATH: Final = 107
BACKLOG: Final = 1024


class ListenError(BridgeError):
    """A listener could not be opened (address in use, permission denied, ...)."""

    code = "listen_failed"


def parse_tcp(text: str, where: str) -> tuple[str, int]:
    """``"127.0.0.1:8787"``, ``"[::1]:8787"`` or ``"localhost:0"`` as (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{where}: expected HOST:PORT, got {text!r}", field=where)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{where}: port must be a number, got {text!r}", field=where) from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{where}: port must be 0-65535, got {port}", field=where)
    return host, port


def format_tcp(sockname: tuple[str, int] | tuple[str, int, int, int]) -> str:
    host, port = sockname[0], sockname[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_tcp(host: str, port: int, *, where: str) -> socket.socket:
    """A listening TCP socket (``SO_REUSEADDR``) on the first address ``host`` resolves to."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"{where}: cannot resolve {host!r}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    try:
        sock = socket.create_server(address, family=family, backlog=BACKLOG)
    except OSError as exc:
        hint = " (is another evbridge running?)" if exc.errno == errno.EADDRINUSE else ""
        raise ListenError(
            f"{where}: cannot listen on {host}:{port}: {exc.strerror}{hint}"
        ) from None
    return sock


def _live(path: str) -> bool:
    """True if some process accepts connections on the Unix socket at ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _group_id(group: str) -> int:
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(
            f"listen.unix_group: no such group {group!r}", field="listen.unix_group"
        ) from None


def bind_unix(path: str, mode: int, group: str | None = None) -> tuple[socket.socket, int]:
    """A listening Unix socket at ``path`` with file ``mode`` (and ``group``).

    Returns the socket and the file's inode (so `remove_unix` removes only our
    own file). A stale socket file is replaced; a live one, or a file that is
    not a socket, is an error.
    """
    if len(os.fsencode(path)) > MAX_UNIX_PATH:
        raise ConfigError(
            f"listen.unix: {path!r} is {len(os.fsencode(path))} bytes; Unix socket paths are "
            f"limited to {MAX_UNIX_PATH}: use a shorter path",
            field="listen.unix",
        )
    gid = _group_id(group) if group is not None else None
    try:
        existing = os.lstat(path)
    except FileNotFoundError:
        existing = None
    if existing is not None:
        if not stat.S_ISSOCK(existing.st_mode):
            raise ListenError(
                f"listen.unix: {path} exists and is not a socket; refusing to replace it"
            )
        if _live(path):
            raise ListenError(
                f"listen.unix: {path} is in use by another process (is another evbridge running?)"
            )
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # The umask keeps the file from ever being wider than ``mode``; chmod then sets it exactly.
    old_umask = os.umask(0o777 & ~mode)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise ListenError(f"listen.unix: cannot bind {path}: {exc.strerror}") from None
    finally:
        os.umask(old_umask)
    try:
        os.chmod(path, mode)
        if gid is not None:
            os.chown(path, -1, gid)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        remove_unix(path, None)
        raise ListenError(f"listen.unix: cannot set up {path}: {exc.strerror}") from None
    return sock, os.stat(path).st_ino


def absolute(path: str) -> str:
    """``path`` made absolute against the working directory (for logs and /v1/info)."""
    return os.path.abspath(path)


def remove_unix(path: str, inode: int | None) -> None:
    """Remove the socket file at ``path`` if it is still ours (same inode)."""
    with contextlib.suppress(OSError):
        if inode is None or os.lstat(path).st_ino == inode:
            os.unlink(path)
