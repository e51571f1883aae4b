"""CURVE keys for the daemon's tcp endpoints, and access checks for its ipc sockets (README "Trust model").

Key files are ZeroMQ certificates as `nb-serve keygen` (or pyzmq's `zmq.auth.create_certificates`) writes
them: NAME.key holds a public key, NAME.key_secret the key pair and is readable by its owner only.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.auth
import zmq.utils.z85


@dataclass(frozen=True, repr=False)
class CurveKeys:
    """A client's CURVE keys: the daemon's public key and this client's key pair (Z85 bytes)."""
    server_public: bytes
    public: bytes
    secret: bytes

    def __repr__(self) -> str:  # never show the secret key
        return f"CurveKeys(server_public={self.server_public!r}, public={self.public!r})"


def _z85(value: str | bytes | bytearray, what: str) -> bytes:
    key = value.encode() if isinstance(value, str) else bytes(value)
    try:
        if len(key) != 40 or len(zmq.utils.z85.decode(key)) != 32:
            raise ValueError
    except (ValueError, KeyError, IndexError, TypeError):
        raise ValueError(f"{what} is not a 40-character Z85 CURVE key") from None
    return key


def _read(path: str | os.PathLike[str], *, secret: bool) -> tuple[bytes, bytes | None]:
    path = os.fspath(path)
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{path}: not a regular file (a CURVE certificate is expected)")
    if secret and info.st_mode & 0o077:
        raise PermissionError(f"{path}: holds a secret key but is mode {stat.S_IMODE(info.st_mode):04o}; it must be "
                              f"readable by its owner only (chmod 600 {path})")
    public, secret_key = zmq.auth.load_certificate(path)
    public = _z85(public, f"{path}: public-key")
    if secret:
        if secret_key is None:
            raise ValueError(f"{path}: has no secret-key line; give the secret certificate (NAME.key_secret), not "
                             f"the public one")
        secret_key = _z85(secret_key, f"{path}: secret-key")
        if zmq.curve_public(secret_key) != public:
            raise ValueError(f"{path}: public-key does not belong to secret-key")
    return public, secret_key


def load_curve(server_key: str | os.PathLike[str] | bytes | bytearray | None = None,
               client_key: str | os.PathLike[str] | tuple[bytes, bytes] | None = None) -> CurveKeys | None:
    """The keys a client uses on tcp endpoints; None when neither is given.

    server_key  the daemon's public certificate (a path), or its 40-character Z85 public key as bytes
    client_key  this client's secret certificate (a path), or a (public, secret) pair of Z85 bytes
    """
    if server_key is None and client_key is None:
        return None
    if server_key is None or client_key is None:
        raise ValueError("server_key and client_key go together: CURVE needs the daemon's public key and this "
                         "client's key pair")
    if not zmq.has("curve"):
        raise RuntimeError("this libzmq (pyzmq's) was built without CURVE; install a pyzmq built with libsodium")
    if isinstance(server_key, (bytes, bytearray)):
        server = _z85(server_key, "server_key")
    else:
        server, _ = _read(server_key, secret=False)
    if isinstance(client_key, tuple):
        public, secret = (_z85(client_key[0], "client_key[0]"), _z85(client_key[1], "client_key[1]"))
        if zmq.curve_public(secret) != public:
            raise ValueError("client_key: the public key does not belong to the secret key")
    else:
        public, read_secret = _read(client_key, secret=True)
        if read_secret is None:  # _read refuses a certificate without one
            raise ValueError(f"{os.fspath(client_key)}: has no secret-key line")
        secret = read_secret
    return CurveKeys(server, public, secret)


def secure(socket: zmq.Socket[Any], endpoint: str, curve: CurveKeys | None) -> None:
    """Makes `socket` a CURVE client before it connects to a tcp endpoint (ipc endpoints are protected by
    their file permissions instead)."""
    if curve is not None and endpoint.startswith("tcp://"):
        socket.curve_serverkey = curve.server_public
        socket.curve_publickey = curve.public
        socket.curve_secretkey = curve.secret


def check_access(endpoint: str) -> None:
    """Raises PermissionError when this user may not connect to an ipc endpoint (connecting to a unix
    socket needs search permission on its directories and write permission on the file), instead of
    leaving the connection to wait forever. A socket that does not exist yet is left to the timeout."""
    if not endpoint.startswith("ipc://"):
        return
    path = endpoint[len("ipc://"):]
    if path.startswith("@") or os.access(path, os.W_OK):
        return
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return
    except PermissionError:
        raise PermissionError(f"cannot reach {endpoint}: a directory on the path is not searchable by this user "
                              f"(uid {os.getuid()}); see the daemon's RuntimeDirectoryMode and README "
                              f"\"Trust model\"") from None
    try:
        import grp
        group = grp.getgrgid(info.st_gid).gr_name
    except (KeyError, ImportError):
        group = str(info.st_gid)
    raise PermissionError(
        f"permission denied connecting to {endpoint}: the socket is mode {stat.S_IMODE(info.st_mode):04o}, "
        f"group {group}, and this user (uid {os.getuid()}, groups {sorted(os.getgroups())}) may not write to it; "
        f"join that group or ask for serve.socket_mode/serve.socket_group to include you (README \"Trust model\")")
