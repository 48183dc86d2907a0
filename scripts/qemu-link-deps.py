#!/usr/bin/env python3
"""Prints, one per line, the external libraries that QEMU's own build links
into a unit test of the I/O layer (tests/unit/test-io-channel-socket, else
qemu-nbd or qemu-img), read from the QEMU build's meson introspection data:
gnutls, gmodule, zstd... whatever that tree was configured with.  QEMU's
own archives (libqemuutil.a and friends) and linker flags are left out; the
C harness links the objects it needs itself.

Exits non-zero with a message saying what to build when the tree is not
configured or lacks what the QEMU-mode build links (meson.build).

usage: qemu-link-deps.py QEMU_BUILD_DIR
       qemu-link-deps.py --rustc QEMU_BUILD_DIR
       qemu-link-deps.py --rust-crates QEMU_BUILD_DIR

With --rustc it prints the rustc command of a QEMU configured with
--enable-rust (empty otherwise): our static archive carries its own copy of
the Rust standard library, which links into a Rust-enabled QEMU binary only
if the same rustc built both (otherwise: duplicate rust_eh_personality).

With --rust-crates it prints, for a Rust-enabled QEMU, the rlibs that
QEMU's meson built for its subprojects glib-sys-0.21-rs and libc-0.2-rs,
one `CRATE_NAME PATH` line each (nothing for a QEMU without Rust): our
crates then link the very crates QEMU links (--extern).
"""
import json
import os
import sys

NEEDED = ['libqemuutil.a', 'libqom.a.p', 'libio.a.p', 'libcrypto.a.p',
          'libauthz.a.p', 'libevent-loop-base.a.p']
TARGETS = ['libqemuutil.a', 'libqom.a', 'libio.a', 'libcrypto.a',
           'libauthz.a', 'libevent-loop-base.a']
PROBES = ['test-io-channel-socket', 'qemu-nbd', 'qemu-img']
# QEMU's subprojects of the third-party crates we use, by crate name.
RUST_CRATES = {'glib_sys': 'glib-sys-0.21-rs', 'libc': 'libc-0.2-rs'}


def fail(msg):
    sys.stderr.write('qemu_build: %s\n' % msg)
    sys.exit(1)


def rustc(build):
    path = os.path.join(build, 'meson-info', 'intro-compilers.json')
    if not os.path.exists(path):
        fail('%s is not a configured QEMU build directory' % build)
    with open(path) as f:
        rust = json.load(f).get('host', {}).get('rust')
    print(rust['exelist'][0] if rust else '')


def rust_crates(build):
    path = os.path.join(build, 'meson-info', 'intro-targets.json')
    if not os.path.exists(path):
        fail('%s is not a configured QEMU build directory' % build)
    with open(path) as f:
        targets = json.load(f)
    found = {}
    for t in targets:
        if RUST_CRATES.get(t['name']) == t.get('subproject') and \
                t['filename'][0].endswith('.rlib'):
            found[t['name']] = t['filename'][0]
    if not found:
        return  # QEMU without Rust
    for name, subproject in RUST_CRATES.items():
        if name not in found:
            fail('%s builds Rust but not the subproject %s' % (build, subproject))
        if not os.path.exists(found[name]):
            fail('%s is not built yet; build it first: make -C %s'
                 % (found[name], build))
        print(name, found[name])


def main():
    if sys.argv[1] == '--rustc':
        rustc(sys.argv[2])
        return
    if sys.argv[1] == '--rust-crates':
        rust_crates(sys.argv[2])
        return
    build = sys.argv[1]
    intro = os.path.join(build, 'meson-info', 'intro-targets.json')
    if not os.path.exists(intro):
        fail('%s has no meson-info/intro-targets.json: not a configured '
             'QEMU build directory (run ../configure there first)' % build)
    missing = [n for n in NEEDED if not os.path.exists(os.path.join(build, n))]
    if missing or not os.path.exists(
            os.path.join(build, 'libio.a.p', 'io_net-listener.c.o')):
        fail('%s is configured but lacks %s; build them first: '
             'make -C %s %s' % (build, ', '.join(missing) or
                                'io/net-listener.c\'s object', build,
                                ' '.join(TARGETS)))
    with open(intro) as f:
        targets = {t['name']: t for t in json.load(f)}
    probe = next((targets[p] for p in PROBES if p in targets), None)
    if probe is None:
        fail('%s builds none of %s, whose link line says which libraries '
             'QEMU links; configure with --enable-tools' % (build, PROBES))
    params = []
    for src in probe['target_sources']:
        if 'linker' in src:
            params = src.get('parameters', [])
    out = []
    for p in params:
        external = (p.startswith('-l') or p == '-pthread' or
                    (os.path.isabs(p) and '.so' in os.path.basename(p)))
        if external and p not in out:
            out.append(p)
    print('\n'.join(out))


if __name__ == '__main__':
    main()
