"""The trust model (README "Trust model") against real daemons, real libzmq sockets and real key files.

CURVE on tcp endpoints: an authorised client (nbserve.Loader, `nb-serve ctl`, `python -m nbserve`) is served;
a client without CURVE, or with a key pair the daemon does not list, gets nothing on the control or the data
socket. A tcp endpoint beyond loopback without CURVE is refused at start-up, naming the key to set. ipc socket
files get `serve.socket_mode` and `serve.socket_group` whatever the umask; a user the mode leaves out gets a
permission error at once instead of waiting. A second daemon does not take over a running one's sockets, and
an ipc endpoint naming a regular file is an error that leaves the file alone. `nb-serve keygen` writes
certificates pyzmq reads, the secret one mode 0600. Secret keys never reach logs or `status`.
"""

from __future__ import annotations

import grp
import importlib.util
import json
import os
import random
import shutil
import socket as pysocket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import zmq
import zmq.auth

sys.path.insert(0, str(Path(__file__).resolve().parent))

import daemon_support
import loader_support as support

CLIENT_DIR = support.REPO_ROOT / "clients" / "python"
sys.path.insert(0, str(CLIENT_DIR))

import nbserve  # noqa: E402  (the working copy in clients/python)

WAIT_S = daemon_support.WAIT_S
# How long a refused client is given to get an answer it must not get. The daemon answers an authorised
# status request on loopback within milliseconds; this only bounds the negative checks.
REFUSED_S = 1.5


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> support.Dataset:
    root = tmp_path_factory.mktemp("trust-data")
    return support.generate_dataset(
        root, "trust", sequences=4, frames=2, crop=16, samples=2, height=32, width=48, seed=5,
        reference_samples=2, loader={"batch_size": 2, "val_split": 0.25, "samples": 2})


@pytest.fixture
def daemons():
    yield from daemon_support.daemon_factory(CurveDaemon)


@pytest.fixture(scope="module")
def keys(binary, tmp_path_factory) -> dict:
    """Key pairs from `nb-serve keygen`: the server's, an authorised trainer's and an intruder's."""
    directory = tmp_path_factory.mktemp("keys")
    for name in ("server", "trainer", "intruder"):
        support.run_ok(binary, "keygen", name, "--directory", directory)
    authorized = directory / "authorized"
    authorized.mkdir()
    (authorized / "trainer.key").write_bytes((directory / "trainer.key").read_bytes())
    return {"dir": directory, "authorized": authorized,
            **{name: (directory / f"{name}.key", directory / f"{name}.key_secret")
               for name in ("server", "trainer", "intruder")}}


def free_ports(count: int) -> int:
    """A base port with `count` consecutive free loopback ports after it."""
    for _ in range(200):
        base = random.randrange(20000, 60000)
        sockets = []
        try:
            for port in range(base, base + count):
                s = pysocket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise AssertionError("no free ports")


class CurveDaemon(daemon_support.DaemonProcess):
    """A daemon whose start-up wait and requests use CURVE keys when `curve` is given."""

    def __init__(self, binary, config, *extra, curve: tuple | None = None, argv0: Path | None = None, **kwargs):
        self.curve = curve
        super().__init__(argv0 or binary, config, *extra, **kwargs)

    def request(self, body: dict, timeout_s: float = WAIT_S) -> dict:
        return request(self.control, body, timeout_s, self.curve)


def request(endpoint: str, body: dict, timeout_s: float, curve: tuple | None = None) -> dict:
    """One request on a fresh REQ socket, as a CURVE client of (server public file, client secret file) when
    `curve` is given; TimeoutError when no reply comes."""
    socket = zmq.Context.instance().socket(zmq.REQ)
    socket.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        server_public, _ = zmq.auth.load_certificate(curve[0])
        client_public, client_secret = zmq.auth.load_certificate(curve[1])
        socket.curve_serverkey, socket.curve_publickey, socket.curve_secretkey = (
            server_public, client_public, client_secret)
    socket.connect(endpoint)
    try:
        socket.send_json(body)
        if not socket.poll(int(timeout_s * 1000)):
            raise TimeoutError(f"no reply to {body} on {endpoint}")
        return socket.recv_json()
    finally:
        socket.close()


def curve_config(dataset, directory: Path, keys: dict, base: int, **serve) -> Path:
    settings = {"control": f"tcp://127.0.0.1:{base}", "endpoint": f"tcp://127.0.0.1:{{{base + 1}+rank}}",
                "secret_key_file": str(keys["server"][1]), "authorized_keys": str(keys["authorized"]), **serve}
    return daemon_support.daemon_config(dataset, directory, **settings)


def start_failure(binary: Path, config: Path, *extra: str) -> subprocess.CompletedProcess:
    """Runs a daemon that must refuse to start; returns its completed process."""
    result = subprocess.run([str(binary), "run", "--config", str(config), *extra], capture_output=True, text=True,
                            timeout=WAIT_S)
    assert result.returncode != 0, f"the daemon started:\n{result.stderr}"
    return result


def secret_texts(*files: Path) -> list[str]:
    return [zmq.auth.load_certificate(file)[1].decode() for file in files]


# ----------------------------------------------------------------------------------------------------------
# nb-serve keygen


def test_keygen_writes_certificates_with_their_modes(binary, tmp_path):
    for umask in (0o000, 0o022):
        directory = tmp_path / f"umask{umask:03o}"
        completed = subprocess.run([str(binary), "keygen", "node", "--directory", str(directory)],
                                   capture_output=True, text=True, timeout=WAIT_S,
                                   preexec_fn=lambda umask=umask: os.umask(umask))
        assert completed.returncode == 0, completed.stderr
        public, secret = directory / "node.key", directory / "node.key_secret"
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        assert stat.S_IMODE(public.stat().st_mode) == 0o644
        assert stat.S_IMODE(directory.stat().st_mode) & 0o077 == 0
        # pyzmq reads them; the pair belongs together; the public file holds no secret.
        public_key, secret_key = zmq.auth.load_certificate(secret)
        assert zmq.curve_public(secret_key) == public_key
        assert zmq.auth.load_certificate(public) == (public_key, None)
        assert secret_key.decode() not in completed.stdout + completed.stderr
        assert public_key.decode() in completed.stdout
    # Never replaced.
    before = secret.read_bytes()
    again = support.run(binary, "keygen", "node", "--directory", directory)
    assert again.returncode == 1 and "already exists" in again.stderr and secret.read_bytes() == before
    bad = support.run(binary, "keygen", "../escape", "--directory", directory)
    assert bad.returncode == 2 and "plain file name" in bad.stderr


# ----------------------------------------------------------------------------------------------------------
# CURVE on tcp endpoints


def test_curve_authorised_client_is_served_and_others_get_nothing(binary, dataset, daemons, keys, tmp_path):
    base = free_ports(2)
    config = curve_config(dataset, tmp_path, keys, base)
    trainer = (keys["server"][0], keys["trainer"][1])
    daemon = daemons(binary, config, curve=trainer)
    control, data = f"tcp://127.0.0.1:{base}", f"tcp://127.0.0.1:{base + 1}"

    # Control: no CURVE, and CURVE with a key the daemon does not list, get no answer.
    with pytest.raises(TimeoutError):
        request(control, {"cmd": "status"}, REFUSED_S)
    with pytest.raises(TimeoutError):
        request(control, {"cmd": "stop"}, REFUSED_S, (keys["server"][0], keys["intruder"][1]))
    assert daemon.process.poll() is None

    # Data: pulls without CURVE and with the intruder's key are connected first; PUSH would deal them
    # batches round-robin if they were let in, and the trainer would then miss batches.
    context = zmq.Context()
    plain = context.socket(zmq.PULL)
    intruder = context.socket(zmq.PULL)
    server_public, _ = zmq.auth.load_certificate(keys["server"][0])
    intruder.curve_serverkey = server_public
    intruder.curve_publickey, intruder.curve_secretkey = zmq.auth.load_certificate(keys["intruder"][1])
    for socket in (plain, intruder):
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(data)
    try:
        loader = nbserve.Loader(control, server_key=keys["server"][0], client_key=keys["trainer"][1], timeout=WAIT_S)
        try:
            expected = len(loader)
            batches = list(loader)
            assert expected > 0 and len(batches) == expected
            assert loader.last_header["batch"] == expected - 1
        finally:
            loader.close()
        for socket in (plain, intruder):
            assert not socket.poll(200), "an unauthenticated PULL received a message"
    finally:
        plain.close()
        intruder.close()
        context.term()

    # The command-line clients, with and without keys.
    ok = support.run(binary, "ctl", "--control", control, "status", "--json", "--timeout", "10",
                     "--server-key", keys["server"][0], "--client-key", keys["trainer"][1])
    assert ok.returncode == 0, ok.describe()
    status = json.loads(ok.stdout)
    refused = support.run(binary, "ctl", "--control", control, "status", "--timeout", str(REFUSED_S))
    assert refused.returncode == 1 and "--server-key" in refused.stderr
    python = subprocess.run(
        [sys.executable, "-m", "nbserve", "status", "--control", control, "--server-key", str(keys["server"][0]),
         "--client-key", str(keys["trainer"][1])], capture_output=True, text=True, timeout=WAIT_S,
        env={**os.environ, "PYTHONPATH": str(CLIENT_DIR)})
    assert python.returncode == 0 and "rank 0" in python.stdout, python.stderr

    # No secret key in status or in the log; the refused intruder is named by its public key.
    assert daemon.stop() == 0
    log = daemon.log_path.read_text()
    for secret in secret_texts(keys["server"][1], keys["trainer"][1], keys["intruder"][1]):
        assert secret not in log and secret not in json.dumps(status)
    intruder_public = zmq.auth.load_certificate(keys["intruder"][0])[0].decode()
    assert f"client key {intruder_public} refused" in log
    assert "CURVE on every tcp endpoint" in log


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_curve_keys_through_the_torch_loader(binary, dataset, daemons, keys, tmp_path):
    import nbserve.torch

    base = free_ports(2)
    daemons(binary, curve_config(dataset, tmp_path, keys, base), curve=(keys["server"][0], keys["trainer"][1]))
    control = f"tcp://127.0.0.1:{base}"
    loader = nbserve.torch.TrainingSampleLoader_v1(control, stage="val", pin_memory=False, timeout=WAIT_S,
                                                   server_key=keys["server"][0], client_key=keys["trainer"][1])
    try:
        batches = list(loader)
        assert len(batches) == len(loader) > 0
    finally:
        loader.close()
    with pytest.raises(TimeoutError, match="server_key= and client_key="):
        nbserve.torch.TrainingSampleLoader_v1(control, pin_memory=False, timeout=REFUSED_S)


def test_curve_keys_are_checked_at_start(binary, dataset, keys, tmp_path):
    base = free_ports(2)
    loose = tmp_path / "loose.key_secret"
    loose.write_bytes(keys["server"][1].read_bytes())
    loose.chmod(0o644)
    result = start_failure(binary, curve_config(dataset, tmp_path, keys, base, secret_key_file=str(loose)))
    assert result.returncode == 2 and "serve.secret_key_file" in result.stderr and "chmod 600" in result.stderr
    public = tmp_path / "public-only"
    public.write_bytes(keys["server"][0].read_bytes())
    public.chmod(0o600)
    result = start_failure(binary, curve_config(dataset, tmp_path, keys, base, secret_key_file=str(public)))
    assert result.returncode == 2 and "serve.secret_key_file" in result.stderr and "no secret-key" in result.stderr
    empty = tmp_path / "nobody"
    empty.mkdir()
    result = start_failure(binary, curve_config(dataset, tmp_path, keys, base, authorized_keys=str(empty)))
    assert result.returncode == 2 and "serve.authorized_keys" in result.stderr
    result = start_failure(binary, curve_config(dataset, tmp_path, keys, base, authorized_keys=None))
    assert result.returncode == 2 and "serve.authorized_keys" in result.stderr
    for secret in secret_texts(keys["server"][1]):
        assert secret not in result.stderr


# ----------------------------------------------------------------------------------------------------------
# Network endpoints without CURVE


@pytest.mark.parametrize("where", ["endpoint", "control"])
@pytest.mark.parametrize("host", ["0.0.0.0", "*"])
def test_network_endpoint_without_curve_is_refused(binary, dataset, tmp_path, where, host):
    base = free_ports(2)
    serve = {"control": f"tcp://{host}:{base}"} if where == "control" else {"endpoint": f"tcp://{host}:{{{base + 1}+rank}}"}
    config = daemon_support.daemon_config(dataset, tmp_path, **serve)
    result = start_failure(binary, config)
    assert result.returncode == 2
    assert f"serve.{where}" in result.stderr and "serve.secret_key_file" in result.stderr
    assert "serve.allow_unauthenticated_network" in result.stderr
    assert not list(tmp_path.glob("*.sock")), "a refused config left a socket behind"


def test_open_network_endpoint_when_the_config_says_so(binary, dataset, daemons, tmp_path):
    base = free_ports(2)
    config = daemon_support.daemon_config(
        dataset, tmp_path, endpoint=f"tcp://0.0.0.0:{{{base}+rank}}", allow_unauthenticated_network=True)
    daemon = daemons(binary, config)
    assert daemon.request({"cmd": "status"})["ranks"][0]["endpoint"].endswith(f":{base}")
    assert "tcp unauthenticated (serve.allow_unauthenticated_network)" in daemon.log_text()


def test_loopback_tcp_without_curve_still_starts(binary, dataset, daemons, tmp_path):
    base = free_ports(2)
    config = daemon_support.daemon_config(dataset, tmp_path, endpoint=f"tcp://127.0.0.1:{{{base}+rank}}")
    daemons(binary, config).request({"cmd": "status"})


# ----------------------------------------------------------------------------------------------------------
# ipc socket files: mode, group, permission errors


def other_group() -> int | None:
    """A group this process may give files (root: any), other than its own primary group."""
    candidates = [g.gr_gid for g in grp.getgrall()] if os.geteuid() == 0 else os.getgroups()
    return next((gid for gid in candidates if gid != os.getgid()), None)


def umask_wrapper(binary: Path, directory: Path, umask: int) -> Path:
    """An executable that runs nb-serve under `umask` (the daemon must not depend on it)."""
    wrapper = directory / "nb-serve-umask"
    wrapper.write_text(f"#!/bin/sh\numask {umask:03o}\nexec {binary} \"$@\"\n")
    wrapper.chmod(0o755)
    return wrapper


def test_ipc_sockets_get_the_configured_mode_whatever_the_umask(binary, dataset, daemons, tmp_path):
    config = daemon_support.daemon_config(dataset, tmp_path)
    daemon = daemons(binary, config, argv0=umask_wrapper(binary, tmp_path, 0o000))
    for name in ("control.sock", "rank0.sock"):
        info = os.stat(tmp_path / name)
        assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600, name
    daemon.stop()
    config = daemon_support.daemon_config(dataset, tmp_path, socket_mode="0640", control_mode="0600")
    daemons(binary, config, argv0=umask_wrapper(binary, tmp_path, 0o077))
    assert stat.S_IMODE(os.stat(tmp_path / "rank0.sock").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(tmp_path / "control.sock").st_mode) == 0o600


def test_ipc_sockets_get_the_configured_group(binary, dataset, daemons, tmp_path):
    gid = other_group()
    if gid is None:
        pytest.skip("this user belongs to no group besides its primary one")
    config = daemon_support.daemon_config(dataset, tmp_path, socket_mode="0660", socket_group=grp.getgrgid(gid).gr_name)
    daemon = daemons(binary, config)
    for name in ("control.sock", "rank0.sock"):
        info = os.stat(tmp_path / name)
        assert (stat.S_IMODE(info.st_mode), info.st_gid) == (0o660, gid), name
    daemon.stop()
    config = daemon_support.daemon_config(dataset, tmp_path, socket_group="no-such-group-nbserve")
    result = start_failure(binary, config)
    assert result.returncode == 2 and "serve.socket_group" in result.stderr


@pytest.fixture
def shared_directory():
    """A socket directory that other users may traverse (pytest's own tmp directory is private)."""
    directory = Path(tempfile.mkdtemp(prefix="nb-serve-trust-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def as_user(uid: int, gid: int, groups: list[int], body) -> str:
    """Runs `body()` in a forked child with these ids (this interpreter, already loaded: another user may
    not be able to start it); returns "ok" or the exception's type and text."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(read)
        try:
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            body()
            message = "ok"
        except BaseException as error:  # noqa: BLE001 - reported to the parent
            message = f"{type(error).__name__}: {error}"
        os.write(write, message.encode())
        os._exit(0)
    os.close(write)
    chunks = []
    deadline = time.monotonic() + WAIT_S
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        assert time.monotonic() < deadline, "the client as another user did not finish"
        time.sleep(0.01)
    return b"".join(chunks).decode()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_a_user_the_socket_mode_leaves_out_gets_a_permission_error(binary, dataset, shared_directory, daemons, tmp_path):
    directory = shared_directory
    # The socket group: one that the user "nobody" (whose own group is 65534) is not in unless given it.
    nobody, group = 65534, next(g.gr_gid for g in grp.getgrall() if g.gr_gid not in (0, 65534))
    config = daemon_support.daemon_config(dataset, tmp_path, control=f"ipc://{directory}/control.sock",
                                          endpoint=f"ipc://{directory}/rank{{rank}}.sock",
                                          socket_mode="0660", socket_group=str(group))
    daemons(binary, config)
    control = f"ipc://{directory}/control.sock"

    def status():
        nbserve.ControlClient(control, 20.0).request({"cmd": "status"})

    started = time.monotonic()
    denied = as_user(nobody, nobody, [], status)
    assert denied.startswith("PermissionError") and "permission denied" in denied and "0660" in denied, denied
    assert time.monotonic() - started < 10, "the permission error waited for the timeout"
    ctl = subprocess.run([str(binary), "ctl", "--control", control, "status", "--timeout", "20"], capture_output=True,
                         text=True, timeout=WAIT_S, user=nobody, group=nobody, extra_groups=[])
    assert ctl.returncode == 1 and "permission denied" in ctl.stderr, ctl.stderr
    # A member of the socket group gets in, over the control and the data socket.
    assert as_user(nobody, nobody, [group], status) == "ok"

    def pull():
        loader = nbserve.Loader(control, timeout=WAIT_S)
        try:
            assert len(list(loader)) == len(loader) > 0
        finally:
            loader.close()

    assert as_user(nobody, nobody, [group], pull) == "ok"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may connect whatever the mode (the test above runs as nobody)")
def test_a_socket_mode_without_write_gives_its_owner_a_permission_error(binary, dataset, daemons, tmp_path):
    daemons_config = daemon_support.daemon_config(dataset, tmp_path, socket_mode="0400", control_mode="0600")
    daemons(binary, daemons_config)
    started = time.monotonic()
    with pytest.raises(PermissionError, match="0400"):
        nbserve.Loader(f"ipc://{tmp_path}/control.sock", timeout=20)
    assert time.monotonic() - started < 10, "the permission error waited for the timeout"


# ----------------------------------------------------------------------------------------------------------
# A second daemon; what an ipc path may name


def test_second_daemon_does_not_take_over_a_running_one(binary, dataset, daemons, tmp_path):
    config = daemon_support.daemon_config(dataset, tmp_path)
    first = daemons(binary, config)
    before = {name: os.stat(tmp_path / name).st_ino for name in ("control.sock", "rank0.sock")}
    result = start_failure(binary, config)
    assert result.returncode == 1 and "another process answers" in result.stderr and "control.sock" in result.stderr
    # A second daemon on another control endpoint but the same data socket is refused too.
    (tmp_path / "second").mkdir()
    other = daemon_support.daemon_config(dataset, tmp_path / "second", endpoint=f"ipc://{tmp_path}/rank{{rank}}.sock")
    result = start_failure(binary, other)
    assert result.returncode == 1 and "rank0.sock" in result.stderr
    assert {name: os.stat(tmp_path / name).st_ino for name in before} == before
    assert first.request({"cmd": "status"}, timeout_s=5)["ranks"][0]["rank"] == 0
    assert not (tmp_path / "second" / "control.sock").exists()


def test_second_daemon_on_a_tcp_control_endpoint_is_refused(binary, dataset, daemons, tmp_path):
    base = free_ports(2)
    config = daemon_support.daemon_config(dataset, tmp_path, control=f"tcp://127.0.0.1:{base}")
    first = daemons(binary, config)
    (tmp_path / "second").mkdir()
    other = daemon_support.daemon_config(dataset, tmp_path / "second", control=f"tcp://127.0.0.1:{base}")
    result = start_failure(binary, other)
    assert result.returncode == 1 and "is in use" in result.stderr
    assert first.request({"cmd": "status"}, timeout_s=5)["pid"] == first.process.pid


def test_stale_socket_of_a_killed_daemon_is_replaced(binary, dataset, daemons, tmp_path):
    stale = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM)
    stale.bind(str(tmp_path / "control.sock"))
    stale.close()  # the file stays, nobody listens: what a kill -9 leaves
    daemon = daemons(binary, daemon_support.daemon_config(dataset, tmp_path))
    assert daemon.request({"cmd": "status"})["ranks"]
    assert "removing the stale socket" in daemon.log_text()


@pytest.mark.parametrize("which", ["control", "rank0"])
def test_ipc_endpoint_naming_a_regular_file_is_an_error(binary, dataset, tmp_path, which):
    victim = tmp_path / f"{which}.sock"
    victim.write_text("precious\n")
    result = start_failure(binary, daemon_support.daemon_config(dataset, tmp_path))
    assert result.returncode == 1 and "a regular file, not a socket" in result.stderr and str(victim) in result.stderr
    assert victim.read_text() == "precious\n"
    assert not list(tmp_path.glob("*.sock")) or [p.name for p in tmp_path.glob("*.sock")] == [victim.name]


def test_abstract_ipc_endpoints_are_refused(binary, dataset, tmp_path):
    config = daemon_support.daemon_config(dataset, tmp_path, control="ipc://@nb-serve-trust-test")
    result = start_failure(binary, config)
    assert result.returncode == 2 and "serve.control" in result.stderr and "abstract" in result.stderr
