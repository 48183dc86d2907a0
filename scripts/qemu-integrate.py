#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Commit the Rust QIONetListener into a QEMU git tree, as a patch series.

    scripts/qemu-integrate.py QEMU_SRC

QEMU_SRC is a clean git checkout of QEMU (10.2 or later).  The script
commits, on its current branch, a short series that a QEMU developer
would send with `git format-patch`; every commit builds:

  1. io: add trace events of the Rust net listener
  2. rust: add io-sys, the bindings of the Rust net listener
  3. rust: add the QIONetListener crates
  4. io: build the Rust QIONetListener instead of net-listener.c with Rust

After it, `configure --enable-rust` builds every binary that uses the
listener (system emulators, qemu-nbd, qemu-storage-daemon, unit tests)
with ours, and `--disable-rust` builds io/net-listener.c as before.

What goes where in QEMU's tree (our crates are laid out as QEMU's, so
our sources go in unchanged):
  rust/io/net-listener-core/     our core/ (src/ only; its tests run on
                                 the simulated host in our repository),
                                 with qemu/rust/io/net-listener-core/
                                 (meson.build, Cargo.toml)
  rust/io/net-listener/          our src/ (the QEMU host and the C ABI),
                                 with qemu/rust/io/net-listener/
                                 (meson.build, Cargo.toml, staticlib.rs)
  rust/bindings/io-sys/          our bindings/io-sys/ (lib.rs, shim.c,
                                 shim.h), with qemu/rust/bindings/io-sys/:
                                 Cargo.toml, build.rs, wrapper.h with the
                                 includes of our wrapper.h, meson.build
                                 with the allowlist of our io-sys build.rs
  io/trace-events                + our qemu/trace-events
  io/meson.build, meson.build,   edited in place (rust/chardev: the
  rust/meson.build, rust/chardev, crate names the listener's rlib)
  rust/Cargo.toml, Cargo.lock,
  MAINTAINERS

The script never builds anything; it only writes and commits files.
"""

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

OURS = Path(__file__).resolve().parent.parent
TEMPLATES = OURS / "qemu" / "rust"

LISTENER_DIR = "rust/io/net-listener"
CORE_DIR = "rust/io/net-listener-core"
SYS_DIR = "rust/bindings/io-sys"
SHIM_C = f"{SYS_DIR}/shim.c"

SPDX = "SPDX-License-Identifier: GPL-2.0-or-later"

class IntegrationError(Exception):
    pass


# --------------------------------------------------------------------------
# Our sources


def build_rs_allowlist():
    """The bindgen allowlist of io-sys's build.rs, as (flag, name) pairs:
    HOST_FUNCTIONS and the allowlist_* calls, read by the same parser that
    gives meson its bindgen arguments in QEMU mode
    (scripts/io-sys-bindgen-args.py).  QEMU's bindgen_args_common brings
    the rest of the options."""
    spec = importlib.util.spec_from_file_location(
        "io_sys_bindgen_args", OURS / "scripts/io-sys-bindgen-args.py")
    parser = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(parser)
    flat = parser.bindgen_args((OURS / "bindings/io-sys/build.rs").read_text())
    args, it = [], iter(flat)
    for flag in it:
        if flag in parser.NAMED.values():  # the flags that take a name
            name = next(it)
            if flag.startswith("--allowlist-"):
                args.append((flag, name))
    if not any(f == "--allowlist-function" for f, _ in args):
        raise IntegrationError("bindings/io-sys/build.rs: empty allowlist")
    return args


def host_includes():
    """The #include lines of our io-sys wrapper.h (shim.h sits beside it
    in QEMU's tree too)."""
    lines = []
    for line in (OURS / "bindings/io-sys/wrapper.h").read_text().splitlines():
        m = re.match(r'\s*#\s*include\s+"([^"]+)"', line)
        if m:
            lines.append(f'#include "{m.group(1)}"')
    if not lines:
        raise IntegrationError("bindings/io-sys/wrapper.h: no #include")
    return lines


def copy_sources(q, src, dest):
    """Our sources under src, unchanged but for an SPDX line, to dest in
    QEMU's tree; returns the paths written."""
    written = []
    for p in sorted(src.rglob("*")):
        if not p.is_file() or p.suffix not in (".rs", ".c", ".h"):
            continue
        rel = f"{dest}/{p.relative_to(src)}"
        q.write(rel, with_spdx(p, p.read_text()))
        written.append(rel)
    if not written:
        raise IntegrationError(f"{src}: no sources")
    return written


def with_spdx(path, text):
    if SPDX in "\n".join(text.splitlines()[:5]):
        return text
    if path.suffix == ".rs":
        return f"// {SPDX}\n\n{text}"
    if path.suffix in (".c", ".h"):
        return f"/* {SPDX} */\n{text}"
    return text


# --------------------------------------------------------------------------
# QEMU's tree


class Qemu:
    def __init__(self, root):
        self.root = Path(root).resolve()

    def path(self, rel):
        return self.root / rel

    def git(self, *args, capture=False):
        r = subprocess.run(["git", "-C", str(self.root), *args], check=True,
                           text=True, capture_output=capture)
        return r.stdout if capture else None

    def check(self):
        if not (self.root / ".git").exists():
            raise IntegrationError(f"{self.root} is not a git tree")
        for f in ("io/net-listener.c", "io/meson.build", "io/trace-events",
                  "rust/meson.build", "meson.build", "MAINTAINERS",
                  "scripts/rust/rust_root_crate.sh"):
            if not self.path(f).exists():
                raise IntegrationError(f"{self.root}: no {f}; not a QEMU tree with Rust?")
        if self.path(LISTENER_DIR).exists():
            raise IntegrationError(f"{self.root}: {LISTENER_DIR} exists already")
        dirty = self.git("status", "--porcelain", "--untracked-files=no", capture=True)
        if dirty.strip():
            raise IntegrationError(f"{self.root}: uncommitted changes:\n{dirty}")

    def read(self, rel):
        return self.path(rel).read_text()

    def write(self, rel, text):
        p = self.path(rel)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)

    def edit(self, rel, old, new, count=1):
        text = self.read(rel)
        if text.count(old) != count:
            raise IntegrationError(
                f"{rel}: expected {count} occurrence(s) of:\n{old}\n"
                "(QEMU changed there; the script needs updating)")
        self.write(rel, text.replace(old, new))

    def commit(self, subject, body, paths):
        self.git("add", "--", *paths)
        msg = f"{subject}\n\n{body.strip()}\n"
        self.git("commit", "-q", "-s", "-m", msg)


def add_to_cargo_lock(q, packages, add_deps=None):
    """Adds workspace path packages (and dependencies of existing ones) to
    rust/Cargo.lock, in cargo's order (what `cargo metadata` would write,
    without needing the network)."""
    text = q.read("rust/Cargo.lock")
    head, sep, rest = text.partition("[[package]]\n")
    if not sep:
        raise IntegrationError("rust/Cargo.lock: no [[package]]")
    blocks = [b.rstrip("\n") + "\n" for b in rest.split("\n[[package]]\n")]
    for name, deps in packages:
        block = f'name = "{name}"\nversion = "0.1.0"\n'
        if deps:
            block += "dependencies = [\n" + "".join(f' "{d}",\n' for d in deps) + "]\n"
        blocks.append(block)
    for name, deps in (add_deps or {}).items():
        for i, b in enumerate(blocks):
            if b.startswith(f'name = "{name}"\n'):
                m = re.search(r"dependencies = \[\n(.*?)\]\n", b, re.S)
                if not m:
                    raise IntegrationError(f"rust/Cargo.lock: {name} has no dependencies")
                have = re.findall(r'"([^"]+)"', m.group(1))
                listed = "".join(f' "{d}",\n' for d in sorted(set(have + deps)))
                blocks[i] = b[:m.start(1)] + listed + b[m.end(1):]
                break
        else:
            raise IntegrationError(f"rust/Cargo.lock: no package {name}")

    def key(b):
        m = re.match(r'name = "([^"]+)"\nversion = "([^"]+)"', b)
        return (m.group(1), [int(x) if x.isdigit() else x for x in re.split(r"[.+-]", m.group(2))])
    blocks.sort(key=key)
    q.write("rust/Cargo.lock", head + "[[package]]\n" + "\n[[package]]\n".join(blocks))


# --------------------------------------------------------------------------
# The series


def patch_trace_events(q):
    ours = [l for l in (OURS / "qemu/trace-events").read_text().splitlines()
            if l.strip() and not l.startswith("#")]
    text = q.read("io/trace-events")
    if "qio_net_listener_callback" not in text:
        raise IntegrationError("io/trace-events: no net-listener events")
    if not text.endswith("\n"):
        text += "\n"
    text += "\n# rust/io/net-listener (also uses the three events above)\n"
    text += "\n".join(ours) + "\n"
    q.write("io/trace-events", text)
    q.commit(
        "io: add trace events of the Rust net listener",
        """
The Rust implementation of QIONetListener, added in the next patches,
fires the three events of net-listener.c and three of its own:

- qio_net_listener_batch: clients accepted in one wake-up (up to 32,
  where net-listener.c accepts one per wake-up);
- qio_net_listener_backoff: accept failed for lack of file descriptors
  or memory while clients are queued; the socket pauses instead of
  waking up again at once;
- qio_net_listener_release: a removed watch is released, once no
  callback of it can still be running.

Nothing fires them yet.
""",
        ["io/trace-events"])


def patch_io_sys(q):
    allow = build_rs_allowlist()
    args = "\n".join(f"  '{flag}', '{name}'," for flag, name in allow)
    q.write(f"{SYS_DIR}/meson.build",
            (TEMPLATES / "bindings/io-sys/meson.build.in").read_text()
            .replace("@ALLOWLIST@", args))
    q.write(f"{SYS_DIR}/wrapper.h",
            (TEMPLATES / "bindings/io-sys/wrapper.h.in").read_text()
            .replace("@INCLUDES@", "\n".join(host_includes())))
    # build.rs: for cargo (make clippy, rustdoc), the bindings meson
    # generated, as in the other bindings crates.
    for f in ("Cargo.toml", "build.rs"):
        shutil.copyfile(TEMPLATES / "bindings/io-sys" / f, q.path(f"{SYS_DIR}/{f}"))
    # lib.rs only includes the generated file; shim.c/shim.h are the C
    # helpers it declares (QEMU's static inline timer functions, trace
    # events), compiled with io's objects (last patch).
    for f in ("lib.rs", "shim.h", "shim.c"):
        p = OURS / "bindings/io-sys" / f
        q.write(f"{SYS_DIR}/{f}", with_spdx(p, p.read_text()))

    # Set up glib-sys and libc, and build io-sys, before the part of
    # rust/meson.build that only system emulators need.
    q.edit("rust/meson.build", "subproject('glib-sys-0.21-rs', required: true)\n", "")
    q.edit("rust/meson.build", "subproject('libc-0.2-rs', required: true)\n", "")
    q.edit("rust/meson.build", "glib_sys_rs = dependency('glib-sys-0.21-rs')\n", "")
    q.edit("rust/meson.build", "libc_rs = dependency('libc-0.2-rs')\n", "")
    q.edit("rust/meson.build", "if not have_system\n  subdir_done()\n",
           """# io's net listener is used by the tools as well as by the system
# emulators: its crates are built whenever Rust is enabled.
subproject('glib-sys-0.21-rs', required: true)
subproject('libc-0.2-rs', required: true)
glib_sys_rs = dependency('glib-sys-0.21-rs')
libc_rs = dependency('libc-0.2-rs')

subdir('bindings/io-sys')

if not have_system
  subdir_done()
""")
    q.edit("MAINTAINERS", "F: io/\nF: include/io/\n",
           "F: io/\nF: include/io/\nF: rust/bindings/io-sys/\n")
    q.commit(
        "rust: add io-sys, the bindings of the Rust net listener",
        f"""
The Rust implementation of QIONetListener (next patch) calls a small
slice of QEMU's C API: QOM type registration and references, Error,
the DNS resolver, QIOChannelSocket, GSource watches, AioContext fd
handlers, bottom halves and timers.  io-sys declares exactly that slice,
generated by bindgen from wrapper.h with an allowlist of functions and
types; GLib's declarations come from glib-sys, as in the other bindings
crates.

Unlike the crates of rust/bindings/meson.build, io-sys is built in
every Rust-enabled configuration, including --disable-system
--enable-tools: qemu-nbd and qemu-storage-daemon use the listener too.
Hence it depends on no other QEMU crate, and rust/meson.build sets up
glib-sys and libc before it returns for configurations without system
emulators.

The listener's C helpers (QEMU's static inline timer functions and its
trace events) are declared in shim.h and defined in shim.c beside
wrapper.h; nothing compiles shim.c yet.
""",
        [SYS_DIR, "rust/meson.build", "MAINTAINERS"])


def patch_listener(q):
    copy_sources(q, OURS / "core/src", f"{CORE_DIR}/src")
    for f in ("meson.build", "Cargo.toml"):
        shutil.copyfile(TEMPLATES / "io/net-listener-core" / f, q.path(f"{CORE_DIR}/{f}"))
    copy_sources(q, OURS / "src", f"{LISTENER_DIR}/src")
    for f in ("meson.build", "Cargo.toml", "staticlib.rs"):
        shutil.copyfile(TEMPLATES / "io/net-listener" / f, q.path(f"{LISTENER_DIR}/{f}"))
    q.edit("rust/meson.build", "subdir('bindings/io-sys')\n",
           "subdir('bindings/io-sys')\nsubdir('io/net-listener-core')\n"
           "subdir('io/net-listener')\n")
    q.edit("rust/Cargo.toml", '    "hw/timer/hpet",\n',
           '    "hw/timer/hpet",\n    "io/net-listener",\n    "io/net-listener-core",\n')
    # Each patch that adds files names them in MAINTAINERS (checkpatch
    # asks otherwise).
    q.edit("MAINTAINERS", "F: io/\nF: include/io/\n",
           "F: io/\nF: include/io/\nF: rust/io/\n")
    add_to_cargo_lock(q, [
        ("io-sys", ["glib-sys"]),
        ("qio-net-listener", ["glib-sys", "io-sys", "libc", "qio-net-listener-core"]),
        ("qio-net-listener-core", []),
    ])
    q.commit(
        "rust: add the QIONetListener crates",
        """
A Rust implementation of io/net-listener.c with the same C API
(include/io/net-listener.h unchanged), in two crates:

- qio-net-listener-core (rust/io/net-listener-core): the state machine,
  written against a small host interface, on std alone;
- qio-net-listener (rust/io/net-listener): that interface implemented
  over QEMU's C API (the only unsafe code, in src/qemu) and the C ABI
  (src/ffi.rs), built as an rlib, for binaries that rustc links, and as
  qio_net_listener_c, a C static library made from it, for binaries
  that the C compiler links.

What it does better than net-listener.c:

- any AioContext can drive the accept (today
  qio_net_listener_set_client_aio_func asserts on anything but the main
  loop's), and whatever a dispatch uses stays alive until it returns,
  whatever the callback does (clear the callback, disconnect, drop the
  last reference, run a nested loop);
- one wake-up accepts up to 32 queued clients;
- out of file descriptors with clients queued, the socket pauses for
  100 ms instead of spinning;
- qio_net_listener_disconnect() waits for uses of the listening sockets
  in flight, so a file descriptor number is never reused under it.

Nothing links the libraries yet.
""",
        [CORE_DIR, LISTENER_DIR, "rust/meson.build", "rust/Cargo.toml", "rust/Cargo.lock",
         "MAINTAINERS"])


def patch_link(q):
    q.edit("io/meson.build", "  'net-listener.c',\n", "")
    text = q.read("io/meson.build")
    text += f"""
if have_rust
  # rust/io/net-listener replaces net-listener.c.  Its C helpers (QEMU's
  # static inline timer functions, trace events) go with io's objects.
  _net_listener_helpers = static_library('net-listener-helpers',
    files('../{SHIM_C}'), genh,
    c_args: ['-DQIO_NL_QEMU_TRACE'],
    dependencies: [glib],
    build_by_default: false)
  io_ss.add(declare_dependency(
    objects: _net_listener_helpers.extract_all_objects(recursive: false)))
else
  io_ss.add(files('net-listener.c'))
endif
"""
    q.write("io/meson.build", text)

    link = (TEMPLATES / "io/net-listener/meson-link.build").read_text()
    q.write(f"{LISTENER_DIR}/meson.build", q.read(f"{LISTENER_DIR}/meson.build") + link)

    q.edit("rust/meson.build",
           "  message('Rust enabled but it is only used by system emulators.')\n",
           "  message('Rust enabled: used by io\\'s net listener and the system emulators.')\n")

    # QEMU's chardev crate links libchardev, whose char-socket.c calls
    # the listener: the crate brings the listener's rlib to whatever
    # rustc links with it (its tests, the emulators).
    q.edit("rust/chardev/meson.build",
           "  link_with: [_bql_rs, _migration_rs, _qom_rs, _util_rs],\n",
           "  link_with: [_bql_rs, _migration_rs, _qom_rs, _util_rs, _qio_net_listener_rs],\n")
    q.edit("rust/chardev/src/lib.rs", "pub use chardev_sys as bindings;\n",
           """pub use chardev_sys as bindings;

// libchardev's char-socket.c calls io's QIONetListener, which is Rust
// (rust/io/net-listener): whatever links this crate links the listener.
extern crate qio_net_listener as _;
""")
    q.edit("rust/chardev/Cargo.toml", 'util = { path = "../util" }\n',
           'util = { path = "../util" }\nqio-net-listener = { path = "../io/net-listener" }\n')
    add_to_cargo_lock(q, [], add_deps={"chardev": ["qio-net-listener"]})

    q.edit("meson.build", "# Other build targets\n", """if have_rust
  # io's net listener is Rust (rust/io/net-listener) and each binary
  # must hold one Rust standard library.  The system emulators above
  # are linked by rustc, which takes the listener's rlib with their
  # root crate (rust_devices_ss).  The binaries below are linked by the
  # C compiler: they get the listener from a C static library that
  # carries its own standard library, through the dependencies that
  # lead to the listener's callers.
  io = declare_dependency(dependencies: [io, qio_net_listener_c])
  chardev = declare_dependency(dependencies: [chardev, qio_net_listener_c])
  blockdev = declare_dependency(dependencies: [blockdev, qio_net_listener_c])
endif

# Other build targets
""")
    q.commit(
        "io: build the Rust QIONetListener instead of net-listener.c with Rust",
        f"""
With Rust enabled, io/net-listener.c is not built and every binary that
uses QIONetListener gets rust/io/net-listener instead; without Rust
nothing changes.  The choice follows the Rust option rather than a
separate meson option because the listener has no users that could
prefer the C version: its C API is unchanged, and a second option would
only double the configurations to test.

Each binary must hold exactly one Rust standard library, whichever
linker links it:

- rustc links the system emulators from their per-target root crate.
  The listener's rlib joins that crate through rust_devices_ss, like the
  Rust devices, unconditionally; rustc keeps its #[no_mangle] functions
  for the C callers, and the emulator has the one std of its root crate.
  Every system emulator is therefore linked by rustc when Rust is on.
  The other binaries that rustc links with libchardev's objects (the
  Rust tests of rust/hw/core) get the rlib from QEMU's chardev crate,
  which now names it with "extern crate": libchardev's char-socket.c
  calls the listener.

- The C compiler links the tools (qemu-nbd, qemu-storage-daemon) and the
  unit and qtest binaries.  They get qio_net_listener_c, a C static
  library holding the listener and a standard library.  It is added to
  the io, chardev and blockdev dependencies only after the emulators
  are defined: the callers of the listener (blockdev-nbd.c, qemu-nbd.c,
  char-socket.c, vhost-user-server.c through blockdev) reach the
  C-linked binaries through those, while the emulators, which took the
  older dependency objects through system_ss, never see the library.

This also works with --disable-system --enable-tools --enable-rust:
rust/meson.build builds the listener's crates before it returns for
configurations without system emulators.

The listener's C helpers (QEMU's static inline timer functions, trace
events) are compiled with io's objects, from
{SHIM_C}.
""",
        ["io/meson.build", f"{LISTENER_DIR}/meson.build", "rust/meson.build", "meson.build",
         "rust/chardev", "rust/Cargo.lock"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("qemu_src", help="QEMU git source tree (clean)")
    args = parser.parse_args()
    q = Qemu(args.qemu_src)
    try:
        q.check()
        base = q.git("rev-parse", "HEAD", capture=True).strip()
        patch_trace_events(q)
        patch_io_sys(q)
        patch_listener(q)
        patch_link(q)
        left = q.git("status", "--porcelain", "--untracked-files=no", capture=True)
        if left.strip():
            raise IntegrationError(f"changes left out of the series:\n{left}")
    except (IntegrationError, subprocess.CalledProcessError) as e:
        print(f"qemu-integrate: {e}", file=sys.stderr)
        return 1
    print(q.git("log", "--oneline", f"{base}..HEAD", capture=True), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
