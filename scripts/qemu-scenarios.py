#!/usr/bin/env python3
"""Checks a QEMU build that links qio-net-listener in place of net-listener.c.

Runs the user's own QEMU binaries (it builds nothing) on loopback and unix
sockets in a temporary directory.  With --bin DIR, the tools:

  nbd       qemu-nbd serves a qcow2 image on a unix socket and on a TCP
            port; `qemu-nbd --list` and `qemu-img info` read it back.
  activation  qemu-nbd under systemd-socket-activate (a pre-opened fd goes
            through qio_net_listener_add), three clients in turn.
  deadlock  the scenario of QEMU commit "qio: Add QIONetListener API for
            using AioContext": one qemu-storage-daemon starts an NBD server
            on a unix socket, exports a qcow2 node, then blockdev-adds a
            qcow2 image whose backing file is that same export, all over
            QMP.  Passes if blockdev-add answers within --timeout seconds;
            a server whose accept is GMainContext-driven hangs instead.

With --system PATH, a qemu-system binary of any target, on the target's
default machine (`-machine none` where the target has no default, as
aarch64; --machine to choose), its guest paused (-S, -nodefaults, no
display):

  chardev   a chardev socket server (server=on,wait=off) carrying an HMP
            monitor takes two clients in turn: the second, connected while
            the first is served, gets the monitor only after the first
            leaves (the listener's watch is off, then on again).
  migrate   the paused guest migrates over TCP and over a unix socket to a
            second process started with -incoming (the destination's
            listener is ours); QMP migrate, query-migrate until completed.
  vnc       a VNC server (-vnc 127.0.0.1:N) sends the RFB greeting to two
            clients at once, and to a third after they left.
  nbd-server  the NBD server over QMP: nbd-server-start on a unix socket,
            an NBD client lists the export, nbd-server-stop (connecting
            then fails), start again on TCP, stop, start on unix again.

usage: qemu-scenarios.py [--bin DIR] [--system PATH] [--timeout S] [SCENARIO...]
       (DIR holds qemu-img, qemu-nbd and storage-daemon/qemu-storage-daemon;
       without SCENARIO, every scenario of the binaries given)
Prints one line per scenario (NAME: ok ... or NAME: FAIL ...); exit
status 0 if every selected scenario passed.  Every wait is bounded, every
child process is killed at the end.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import struct
import tempfile
import time

# Every process started here, killed at the end whatever happens.
CHILDREN = []


def spawn(cmd, **kw):
    proc = subprocess.Popen(cmd, **kw)
    CHILDREN.append(proc)
    return proc


def kill_children():
    for proc in CHILDREN:
        if proc.poll() is None:
            proc.kill()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
    CHILDREN.clear()


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def wait_for(path_or_port, deadline):
    while time.monotonic() < deadline:
        try:
            if isinstance(path_or_port, int):
                socket.create_connection(("127.0.0.1", path_or_port), 0.2).close()
            elif os.path.exists(path_or_port):
                return
            else:
                raise OSError
            return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"{path_or_port} never became ready")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scenario_nbd(bins, tmp, timeout):
    img = os.path.join(tmp, "disk.qcow2")
    img2 = os.path.join(tmp, "disk2.qcow2")
    for i in (img, img2):
        run([bins["qemu-img"], "create", "-q", "-f", "qcow2", i, "4M"])
    sock = os.path.join(tmp, "nbd.sock")
    port = free_port()
    servers = []
    try:
        servers.append(spawn(
            [bins["qemu-nbd"], "--persistent", "--shared=4", "-f", "qcow2",
             "-x", "disk", "-k", sock, img]))
        servers.append(spawn(
            [bins["qemu-nbd"], "--persistent", "--shared=4", "-f", "qcow2",
             "-x", "disk", "-b", "127.0.0.1", "-p", str(port), img2]))
        deadline = time.monotonic() + timeout
        wait_for(sock, deadline)
        wait_for(port, deadline)
        out = run([bins["qemu-nbd"], "--list", "-k", sock], timeout=timeout).stdout
        assert "export: 'disk'" in out, out
        out = run([bins["qemu-nbd"], "--list", "-b", "127.0.0.1", "-p", str(port)],
                  timeout=timeout).stdout
        assert "export: 'disk'" in out, out
        for uri in (f"nbd+unix:///disk?socket={sock}", f"nbd://127.0.0.1:{port}/disk"):
            info = json.loads(run([bins["qemu-img"], "info", "--output=json", uri],
                                  timeout=timeout).stdout)
            assert info["virtual-size"] == 4 * 1024 * 1024, info
        print(f"nbd: ok (unix {sock}, tcp 127.0.0.1:{port}: --list and qemu-img info)")
        return True
    finally:
        for s in servers:
            s.terminate()
            s.wait(5)


def scenario_activation(bins, tmp, timeout):
    """qemu-nbd started by systemd-socket-activate: qio_net_listener_add()
    of a pre-opened listening fd, serving several clients in turn."""
    import shutil
    activate = shutil.which("systemd-socket-activate")
    if not activate:
        print("activation: FAIL: systemd-socket-activate not found (package systemd)")
        return False
    img = os.path.join(tmp, "disk.qcow2")
    run([bins["qemu-img"], "create", "-q", "-f", "qcow2", img, "1M"])
    port = free_port()
    server = spawn([activate, "-l", f"127.0.0.1:{port}", bins["qemu-nbd"],
                               "--persistent", "-f", "qcow2", "-x", "disk", img],
                              stderr=subprocess.DEVNULL)
    try:
        wait_for(port, time.monotonic() + timeout)
        for _ in range(3):
            out = run([bins["qemu-nbd"], "--list", "-b", "127.0.0.1", "-p", str(port)],
                      timeout=timeout).stdout
            assert "export: 'disk'" in out, out
        print(f"activation: ok (socket-activated qemu-nbd on 127.0.0.1:{port}, 3 clients)")
        return True
    finally:
        server.terminate()
        server.wait(5)


class Qmp:
    def __init__(self, path, timeout, proc=None):
        """Connects to the QMP server at PATH, waiting at most TIMEOUT
        seconds for it (and failing early if PROC, its process, exits)."""
        deadline = time.monotonic() + timeout
        while True:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.settimeout(timeout)
            try:
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"QEMU exited with status {proc.returncode}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no QMP server at {path} within {timeout} s")
                time.sleep(0.05)
        self.file = self.sock.makefile("rw")
        json.loads(self.file.readline())  # greeting
        self.cmd("qmp_capabilities")

    def cmd(self, command, **args):
        self.file.write(json.dumps({"execute": command, "arguments": args}) + "\n")
        self.file.flush()
        while True:
            msg = json.loads(self.file.readline())
            if "event" in msg:
                continue
            if "error" in msg:
                raise RuntimeError(f"{command}: {msg['error']}")
            return msg["return"]


def scenario_deadlock(bins, tmp, timeout):
    base = os.path.join(tmp, "base.qcow2")
    top = os.path.join(tmp, "top.qcow2")
    nbd = os.path.join(tmp, "nbd.sock")
    qmp_path = os.path.join(tmp, "qmp.sock")
    run([bins["qemu-img"], "create", "-q", "-f", "qcow2", base, "1M"])
    run([bins["qemu-img"], "create", "-q", "-f", "qcow2", "-u", "-F", "raw",
         "-b", f"nbd+unix:///base?socket={nbd}", top, "1M"])
    qsd = spawn([bins["qemu-storage-daemon"],
                            "--chardev", f"socket,id=qmp,path={qmp_path},server=on,wait=off",
                            "--monitor", "chardev=qmp"])
    try:
        wait_for(qmp_path, time.monotonic() + timeout)
        qmp = Qmp(qmp_path, timeout)
        qmp.cmd("blockdev-add", driver="qcow2", **{"node-name": "base"},
                file={"driver": "file", "filename": base})
        qmp.cmd("nbd-server-start", addr={"type": "unix", "data": {"path": nbd}})
        qmp.cmd("nbd-server-add", device="base", name="base")
        start = time.monotonic()
        try:
            qmp.cmd("blockdev-add", driver="qcow2", **{"node-name": "top"},
                    file={"driver": "file", "filename": top})
        except (socket.timeout, TimeoutError):
            print(f"deadlock: FAIL: hung: blockdev-add did not answer within {timeout} s")
            return False
        elapsed = time.monotonic() - start
        nodes = qmp.cmd("query-named-block-nodes", flat=True)
        assert any(n["drv"] == "nbd" for n in nodes), "top's backing is not the NBD export"
        print(f"deadlock: ok: blockdev-add of a qcow2 backed by the same daemon's "
              f"NBD export answered in {elapsed * 1000:.1f} ms")
        return True
    finally:
        qsd.kill()
        qsd.wait(5)


# --- qemu-system scenarios ------------------------------------------------


class System:
    """One qemu-system process: a paused machine (the target's default),
    no devices, no display, a QMP server on a unix socket; stderr goes to
    a log file."""

    data_dirs = []  # -L DIR options, from the command line
    machine = []  # -machine NAME, from the command line or the binary

    @staticmethod
    def default_machine(binary):
        """The target's default machine, or `none` (every target has it)
        for targets without a default (aarch64, arm, riscv...)."""
        out = subprocess.run([binary, "-machine", "help"], capture_output=True,
                             text=True, timeout=30, check=True).stdout
        for line in out.splitlines():
            if line.rstrip().endswith("(default)"):
                return line.split()[0]
        return "none"

    def __init__(self, binary, tmp, name, timeout, extra=()):
        self.name = name
        self.log = os.path.join(tmp, f"{name}.log")
        qmp_path = os.path.join(tmp, f"{name}.qmp")
        with open(self.log, "w") as log:
            self.proc = spawn([binary, *System.machine, "-nodefaults", "-display", "none",
                               "-S", "-qmp", f"unix:{qmp_path},server=on,wait=off",
                               *System.data_dirs, *extra],
                              stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            # QEMU answers QMP from its main loop, so once qmp_capabilities
            # returns, every -chardev, -vnc and -incoming listener exists.
            self.qmp = Qmp(qmp_path, timeout, self.proc)
        except Exception as e:
            raise RuntimeError(f"{name}: {e}; {self.log_tail()}") from e

    def log_tail(self):
        with open(self.log) as f:
            lines = f.read().strip().splitlines()
        return "stderr: " + (" | ".join(lines[-5:]) if lines else "(empty)")

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        """Kills QEMU; a failure inside the block also reports its stderr."""
        self.close()
        if exc is not None and kind is not KeyboardInterrupt:
            raise RuntimeError(f"{type(exc).__name__}: {exc}; {self.log_tail()}") from exc


def recv_until(sock, marker, deadline):
    """Reads from SOCK until MARKER has arrived; bounded by DEADLINE."""
    data = b""
    while marker not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no {marker!r} in time; got {data[-200:]!r}")
        sock.settimeout(left)
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed before {marker!r}; got {data[-200:]!r}")
        data += chunk
    return data


def recv_exact(sock, n, deadline):
    data = b""
    while len(data) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{len(data)} of {n} bytes in time")
        sock.settimeout(left)
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def connect(addr, timeout):
    """A client socket connected to ADDR: a unix path or a TCP port on
    127.0.0.1."""
    if isinstance(addr, int):
        return socket.create_connection(("127.0.0.1", addr), timeout)
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(timeout)
    try:
        sock.connect(addr)
    except OSError:
        sock.close()
        raise
    return sock


def refused(addr, timeout):
    """Whether connecting to ADDR fails: nothing listens there any more."""
    try:
        connect(addr, timeout).close()
        return False
    except OSError:
        return True


def free_display():
    """A VNC display number N whose port 5900+N is free on 127.0.0.1."""
    for display in range(10, 100):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", 5900 + display))
                return display
            except OSError:
                continue
    raise RuntimeError("no free VNC port in 5910-5999")


def hmp_info_status(sock, deadline):
    """Waits for the HMP prompt on SOCK, then checks `info status`."""
    recv_until(sock, b"(qemu) ", deadline)
    sock.sendall(b"info status\r\n")
    status = recv_until(sock, b"(qemu) ", deadline)
    assert b"VM status: paused" in status, status


def scenario_chardev(qemu, tmp, timeout):
    port = free_port()
    with System(qemu, tmp, "chardev", timeout,
                ["-chardev", f"socket,id=c0,host=127.0.0.1,port={port},server=on,wait=off",
                 "-mon", "chardev=c0,mode=readline"]):
        first = connect(port, timeout)
        hmp_info_status(first, time.monotonic() + timeout)
        # A second client queues in the kernel's backlog: the chardev takes
        # one client at a time, so its listener's watch is off meanwhile.
        second = connect(port, timeout)
        second.settimeout(0.5)
        try:
            early = second.recv(4096)
        except socket.timeout:
            early = None
        assert early is None, f"second client served while the first is: {early!r}"
        first.close()
        hmp_info_status(second, time.monotonic() + timeout)
        second.close()
    print(f"chardev: ok (socket server 127.0.0.1:{port} with an HMP monitor: "
          f"two clients in turn, the second served only after the first left)")
    return True


def migrate_once(qemu, tmp, timeout, kind):
    if kind == "tcp":
        port = free_port()
        uri, addr = f"tcp:127.0.0.1:{port}", port
    else:
        addr = os.path.join(tmp, "migrate.sock")
        uri = f"unix:{addr}"
    with System(qemu, tmp, f"src-{kind}", timeout, ["-m", "64M"]) as src, \
         System(qemu, tmp, f"dst-{kind}", timeout, ["-m", "64M", "-incoming", uri]) as dst:
        before = src.qmp.cmd("query-status")["status"]
        start = time.monotonic()
        src.qmp.cmd("migrate", uri=uri)
        deadline = start + 6 * timeout
        while (status := src.qmp.cmd("query-migrate")).get("status") != "completed":
            if status.get("status") in ("failed", "cancelled"):
                raise RuntimeError(f"migration {status['status']}: "
                                   f"{status.get('error-desc', '')}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"migration still {status.get('status')} after "
                                   f"{6 * timeout} s")
            time.sleep(0.05)
        elapsed = time.monotonic() - start
        # The destination stops listening once its migration channel is in.
        while not refused(addr, timeout):
            if time.monotonic() > deadline:
                raise TimeoutError(f"destination still listening on {uri} after migrating")
            time.sleep(0.05)
        while dst.qmp.cmd("query-migrate").get("status") != "completed":
            if time.monotonic() > deadline:
                raise TimeoutError("destination's migration not completed")
            time.sleep(0.05)
        status = dst.qmp.cmd("query-status")["status"]
        assert status == before, f"destination is {status}, the source was {before}"
    return f"{kind} {elapsed * 1000:.0f} ms"


def scenario_migrate(qemu, tmp, timeout):
    done = [migrate_once(qemu, tmp, timeout, kind) for kind in ("tcp", "unix")]
    print(f"migrate: ok (paused guest to a second process's -incoming listener, "
          f"then closed: {', '.join(done)})")
    return True


def scenario_vnc(qemu, tmp, timeout):
    display = free_display()
    port = 5900 + display
    greeting = b"RFB 003.008\n"
    with System(qemu, tmp, "vnc", timeout, ["-vnc", f"127.0.0.1:{display}"]) as vm:
        deadline = time.monotonic() + timeout
        first = connect(port, timeout)
        second = connect(port, timeout)
        for client in (first, second):
            got = recv_exact(client, len(greeting), deadline)
            assert got == greeting, got
        clients = vm.qmp.cmd("query-vnc").get("clients", [])
        assert len(clients) == 2, f"query-vnc lists {len(clients)} clients, not 2"
        first.close()
        second.close()
        third = connect(port, timeout)
        got = recv_exact(third, len(greeting), time.monotonic() + timeout)
        assert got == greeting, got
        third.close()
    print(f"vnc: ok (-vnc 127.0.0.1:{display}, port {port}: RFB greeting to two "
          f"clients at once, then to a third)")
    return True


NBD_OPT_MAGIC = 0x49484156454F5054  # "IHAVEOPT"
NBD_REP_MAGIC = 0x3E889045565A9
NBD_OPT_ABORT, NBD_OPT_LIST = 2, 3
NBD_REP_ACK, NBD_REP_SERVER = 1, 2


def nbd_list(addr, timeout):
    """The export names an NBD server at ADDR lists (fixed newstyle
    handshake, NBD_OPT_LIST, NBD_OPT_ABORT)."""
    deadline = time.monotonic() + timeout
    with connect(addr, timeout) as sock:
        hello = recv_exact(sock, 18, deadline)
        assert hello[:16] == b"NBDMAGIC" + struct.pack(">Q", NBD_OPT_MAGIC), hello
        sock.sendall(struct.pack(">I", 3))  # FIXED_NEWSTYLE | NO_ZEROES
        sock.sendall(struct.pack(">QII", NBD_OPT_MAGIC, NBD_OPT_LIST, 0))
        names = []
        while True:
            magic, opt, rep, length = struct.unpack(">QIII", recv_exact(sock, 20, deadline))
            assert magic == NBD_REP_MAGIC and opt == NBD_OPT_LIST, (magic, opt)
            data = recv_exact(sock, length, deadline) if length else b""
            if rep == NBD_REP_ACK:
                break
            assert rep == NBD_REP_SERVER, f"NBD reply type {rep:#x}"
            (name_len,) = struct.unpack(">I", data[:4])
            names.append(data[4:4 + name_len].decode())
        sock.sendall(struct.pack(">QII", NBD_OPT_MAGIC, NBD_OPT_ABORT, 0))
    return names


def scenario_nbd_server(qemu, tmp, timeout):
    img = os.path.join(tmp, "disk.raw")
    with open(img, "wb") as f:
        f.truncate(4 * 1024 * 1024)
    sock = os.path.join(tmp, "nbd.sock")
    port = free_port()
    rounds = [("unix", {"type": "unix", "data": {"path": sock}}, sock),
              ("tcp", {"type": "inet", "data": {"host": "127.0.0.1", "port": str(port)}}, port),
              ("unix", {"type": "unix", "data": {"path": sock}}, sock)]
    with System(qemu, tmp, "nbd-server", timeout,
                ["-blockdev", f"driver=raw,node-name=disk,file.driver=file,file.filename={img}"]
                ) as vm:
        for i, (kind, addr, client_addr) in enumerate(rounds):
            vm.qmp.cmd("nbd-server-start", addr=addr)
            vm.qmp.cmd("nbd-server-add", device="disk", name=f"disk{i}")
            names = nbd_list(client_addr, timeout)
            assert names == [f"disk{i}"], f"round {i} ({kind}): exports {names}"
            vm.qmp.cmd("nbd-server-stop")
            assert refused(client_addr, timeout), \
                f"round {i} ({kind}): still accepting after nbd-server-stop"
    print(f"nbd-server: ok (QMP nbd-server-start/stop on unix {sock}, "
          f"tcp 127.0.0.1:{port}, unix again: export listed, refused once stopped)")
    return True


TOOL_SCENARIOS = {"nbd": scenario_nbd, "activation": scenario_activation,
                  "deadlock": scenario_deadlock}
SYSTEM_SCENARIOS = {"chardev": scenario_chardev, "migrate": scenario_migrate,
                    "vnc": scenario_vnc, "nbd-server": scenario_nbd_server}


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", help="QEMU build directory (the tools scenarios)")
    ap.add_argument("--system", help="a qemu-system binary (the system scenarios)")
    ap.add_argument("-L", dest="data_dir", action="append", default=[],
                    help="QEMU's -L (data directory: keymaps for -vnc), for a "
                         "qemu-system binary moved out of its build tree")
    ap.add_argument("--machine", help="qemu-system's -machine (default: the "
                                      "target's default machine, else none)")
    ap.add_argument("--timeout", type=float, default=10.0,
                    help="bound of each wait in seconds (migration: 6 times it)")
    ap.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                    help=", ".join(list(TOOL_SCENARIOS) + list(SYSTEM_SCENARIOS)))
    a = ap.parse_args()
    unknown = [n for n in a.scenarios if n not in TOOL_SCENARIOS and n not in SYSTEM_SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario {', '.join(unknown)}")
    if not a.bin and not a.system:
        ap.error("give --bin DIR, --system PATH or both")
    System.data_dirs = [opt for d in a.data_dir for opt in ("-L", d)]
    if a.system:
        System.machine = ["-machine", a.machine or System.default_machine(a.system)]
    selected = a.scenarios or ((list(TOOL_SCENARIOS) if a.bin else []) +
                               (list(SYSTEM_SCENARIOS) if a.system else []))
    bins = {}
    if a.bin:
        bins = {"qemu-img": os.path.join(a.bin, "qemu-img"),
                "qemu-nbd": os.path.join(a.bin, "qemu-nbd"),
                "qemu-storage-daemon": os.path.join(a.bin,
                                                    "storage-daemon/qemu-storage-daemon")}
    ok = True
    try:
        for name in selected:
            if name in TOOL_SCENARIOS and not a.bin:
                ap.error(f"{name} needs --bin")
            if name in SYSTEM_SCENARIOS and not a.system:
                ap.error(f"{name} needs --system")
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    if name in TOOL_SCENARIOS:
                        passed = TOOL_SCENARIOS[name](bins, tmp, a.timeout)
                    else:
                        passed = SYSTEM_SCENARIOS[name](a.system, tmp, a.timeout)
                except Exception as e:
                    print(f"{name}: FAIL: {type(e).__name__}: {e}")
                    passed = False
                finally:
                    kill_children()
                ok &= passed
    finally:
        kill_children()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
