#!/usr/bin/env python3
"""Checks a QEMU build that links qio-net-listener in place of net-listener.c.

Runs the user's own qemu-img, qemu-nbd and qemu-storage-daemon binaries (it
builds nothing) on loopback and unix sockets in a temporary directory:

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

usage: qemu-scenarios.py --bin DIR [--timeout S] [nbd] [activation] [deadlock]
       (DIR holds qemu-img, qemu-nbd and storage-daemon/qemu-storage-daemon)
Exit status 0 if every selected scenario passed.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time


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
        servers.append(subprocess.Popen(
            [bins["qemu-nbd"], "--persistent", "--shared=4", "-f", "qcow2",
             "-x", "disk", "-k", sock, img]))
        servers.append(subprocess.Popen(
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
        print("activation: FAILED: systemd-socket-activate not found (package systemd)")
        return False
    img = os.path.join(tmp, "disk.qcow2")
    run([bins["qemu-img"], "create", "-q", "-f", "qcow2", img, "1M"])
    port = free_port()
    server = subprocess.Popen([activate, "-l", f"127.0.0.1:{port}", bins["qemu-nbd"],
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
    def __init__(self, path, timeout):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
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
    qsd = subprocess.Popen([bins["qemu-storage-daemon"],
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
            print(f"deadlock: HUNG: blockdev-add did not answer within {timeout} s")
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


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="QEMU build directory")
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("scenarios", nargs="*", default=["nbd", "activation", "deadlock"])
    a = ap.parse_args()
    bins = {"qemu-img": os.path.join(a.bin, "qemu-img"),
            "qemu-nbd": os.path.join(a.bin, "qemu-nbd"),
            "qemu-storage-daemon": os.path.join(a.bin, "storage-daemon/qemu-storage-daemon")}
    ok = True
    for name in a.scenarios:
        with tempfile.TemporaryDirectory() as tmp:
            ok &= {"nbd": scenario_nbd, "activation": scenario_activation,
                   "deadlock": scenario_deadlock}[name](bins, tmp, a.timeout)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
