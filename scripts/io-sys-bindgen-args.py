#!/usr/bin/env python3
"""Prints, one per line, the bindgen command-line arguments equivalent to
the bindgen::Builder calls of bindings/io-sys/build.rs: HOST_FUNCTIONS as
--allowlist-function, each .allowlist_var/.allowlist_type/.blocklist_*
call, and the builder options it sets.  meson's rust.bindgen (QEMU mode)
runs bindgen-cli with them, so build.rs stays the one place that lists
what the bindings declare.

Fails on a builder call it does not know, so that a new option in
build.rs cannot be silently left out of the meson build.

usage: io-sys-bindgen-args.py [bindings/io-sys/build.rs]
"""
import os
import re
import sys

# bindgen::Builder method -> bindgen-cli flag, for the calls taking a name
# or pattern.
NAMED = {
    'allowlist_function': '--allowlist-function',
    'allowlist_var': '--allowlist-var',
    'allowlist_type': '--allowlist-type',
    'allowlist_item': '--allowlist-item',
    'blocklist_function': '--blocklist-function',
    'blocklist_type': '--blocklist-type',
    'blocklist_item': '--blocklist-item',
    'blocklist_var': '--blocklist-var',
}
# Boolean options: (method, value) -> flag; None where the value is
# bindgen-cli's default.
BOOLEAN = {
    ('derive_default', 'true'): '--with-derive-default',
    ('derive_default', 'false'): None,
    ('layout_tests', 'true'): None,
    ('layout_tests', 'false'): '--no-layout-tests',
    ('generate_comments', 'true'): None,
    ('generate_comments', 'false'): '--no-doc-comments',
    ('prepend_enum_name', 'true'): None,
    ('prepend_enum_name', 'false'): '--no-prepend-enum-name',
}
# Calls that concern cargo's build only (inputs, clang flags, output).
CARGO_ONLY = {'default', 'header', 'parse_callbacks', 'clang_arg',
              'clang_args', 'generate', 'expect', 'write_to_file'}


def bindgen_args(text):
    m = re.search(r'const HOST_FUNCTIONS: &\[&str\] = &\[(.*?)\];', text, re.S)
    if not m:
        sys.exit('io-sys build.rs: HOST_FUNCTIONS not found')
    args = []
    for name in re.findall(r'"([^"]+)"', m.group(1)):
        args += ['--allowlist-function', name]
    # The builder's calls, one per line as rustfmt writes them, from
    # `bindgen::Builder::default()` to `.generate()`: `.method(arg)` or
    # `builder = builder.method(arg);`.
    start = text.index('bindgen::Builder::default()')
    end = text.index('.generate()', start)
    for line in text[start:end].splitlines():
        m = re.match(r'\s*(?:builder\s*=\s*builder\s*)?\.(\w+)\((.*)\);?\s*$', line)
        if not m:
            continue
        method, arg = m.groups()
        if method in NAMED:
            if not re.fullmatch(r'"[^"]*"', arg):
                continue  # the HOST_FUNCTIONS loop, handled above
            args += [NAMED[method], arg[1:-1]]
        elif (method, arg) in BOOLEAN:
            if BOOLEAN[(method, arg)]:
                args.append(BOOLEAN[(method, arg)])
        elif method not in CARGO_ONLY:
            sys.exit('io-sys build.rs: bindgen call .%s(%s) has no bindgen-cli '
                     'equivalent in %s' % (method, arg, os.path.basename(__file__)))
    return args


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(__file__), '..', 'bindings', 'io-sys', 'build.rs')
    with open(path) as f:
        print('\n'.join(bindgen_args(f.read())))


if __name__ == '__main__':
    main()
