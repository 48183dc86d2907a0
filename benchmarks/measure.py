#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Measures what accepting a client costs each server of bench-accept.

    measure.py [options] [TAG=]BENCH-ACCEPT [[TAG=]BENCH-ACCEPT ...]

Takes built bench-accept binaries (it builds nothing) and, for every
server they have (`--list`), transport (tcp, unix) and pattern (seq,
burst), measures as below.  A TAG names the build a binary comes from
(e.g. compat=build/benchmarks/bench-accept qemu=build-qemu/benchmarks/
bench-accept qemu=build-qemu/benchmarks/bench-accept-upstream): its
listener servers are then called TAG:NAME.  A reference server (raw,
libuv, gio) is measured from the first binary that has it.

1. wall clock: the binaries' timed runs, interleaved: each round runs every
   binary once (`--runs 1 --results`), for --rounds rounds; figures are
   medians over the rounds, ratios are to the raw epoll+accept4 loop;
2. instructions: `bench-accept serve` under callgrind at two sizes N1 < N2
   (the client runs natively, in its own process); per client is
   (Ir(N2) - Ir(N1)) / (N2 - N1), so start-up and tear-down cancel;
3. system calls: the same two runs under `strace -f -c`, likewise;
4. wake-ups: the loop iterations of `serve` that dispatched a client,
   likewise.

The listener's own share of the instructions (listener servers only),
from the same callgrind runs, per client as above:

    own = entry - accept - finalize - callback

  entry     inclusive cost of the listener's watch callback, the function
            the event loop calls: qio_net_listener::qemu::watch::
            {aio_ready,source_ready} for ours, qio_net_listener_aio_func or
            qio_net_listener_channel_func for QEMU's (the largest of those
            found, since the aio one calls the other);
  accept    inclusive cost of qio_channel_socket_accept (the host's: the
            new QIOChannelSocket, accept4, getsockname; a failed accept's
            object and Error too);
  finalize  cost of the calls to object_unref except those from inside
            qio_channel_socket_accept (already in accept): dropping the
            client's last reference, i.e. the channel's finalize, close
            and free;
  callback  inclusive cost of the benchmark's client callback (on_client).

Inclusive costs are the ones `callgrind_annotate --inclusive=yes` shows
(a function's own cost plus that of its calls, by function name), read
from the callgrind file directly.  "loop" is the rest of the process's
instructions per client: the event loop, its poll and dispatch.

Prints a table and writes OUT.json and OUT.csv.  Exits 1 only when a run
fails (a server or client error, or not all clients accepted), never on
a figure; a missing valgrind or strace skips those figures.
"""

import argparse
import csv
import json
import os
import platform
import re
import selectors
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

TRANSPORTS = ("tcp", "unix")
PATTERNS = ("seq", "burst")
RUN_TIMEOUT = 900  # seconds for one traced run: a functional failure

ENTRY_FUNCS = (
    "qio_net_listener::qemu::watch::aio_ready",
    "qio_net_listener::qemu::watch::source_ready",
    "qio_net_listener_aio_func",
    "qio_net_listener_channel_func",
)
ACCEPT_FUNC = "qio_channel_socket_accept"
UNREF_FUNC = "object_unref"
CALLBACK_FUNC = "on_client"


class Failure(Exception):
    """A functional failure: the measurement is void."""


# ---- running bench-accept serve + client -------------------------------


class Lines:
    """Reads lines from a child's stdout with a deadline."""

    def __init__(self, proc, what):
        self.proc = proc
        self.what = what
        self.sel = selectors.DefaultSelector()
        self.sel.register(proc.stdout, selectors.EVENT_READ)
        self.buf = b""

    def readline(self, deadline):
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failure(f"{self.what}: no output in time")
            if not self.sel.select(left):
                continue
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                raise Failure(f"{self.what}: exited early")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def expect(self, prefix, deadline):
        while True:
            line = self.readline(deadline)
            if line.startswith(prefix):
                return line


def kill(proc):
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def serve(binary, tool, server, transport, pattern, n, workdir):
    """One `serve` run under `tool` (a command prefix taking a {out}
    placeholder) with a native client; returns (server pid, done line
    fields)."""
    log = os.path.join(workdir, "serve.log")
    deadline = time.monotonic() + RUN_TIMEOUT
    what = f"{os.path.basename(binary)} serve {server} {transport} {pattern} {n}"
    with open(log, "wb") as errf:
        proc = subprocess.Popen(
            tool + [binary, "serve", server, transport, pattern, str(n)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errf)
    client = None
    try:
        out = Lines(proc, what)
        ready = out.expect("ready ", deadline).split()
        address, pid = ready[1], ready[2].removeprefix("pid=")
        client = subprocess.Popen(
            [binary, "client", transport, pattern, str(n), address, pid],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if pattern == "burst":
            Lines(client, what + " (client)").expect("queued", deadline)
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
        done = out.expect("done ", deadline)
        _, cerr = client.communicate(timeout=max(1, deadline - time.monotonic()))
        if client.returncode != 0:
            raise Failure(f"{what}: client failed: {cerr.decode().strip()}")
        proc.stdin.close()
        if proc.wait(timeout=max(1, deadline - time.monotonic())) != 0:
            raise Failure(f"{what}: exited with {proc.returncode}")
    except (Failure, subprocess.TimeoutExpired) as e:
        kill(proc)
        if client:
            kill(client)
        with open(log, errors="replace") as f:
            tail = "".join(f.readlines()[-20:])
        raise Failure(f"{e}\n{tail}") from None
    fields = dict(kv.split("=") for kv in done.split()[1:])
    if int(fields["accepted"]) != n:
        raise Failure(f"{what}: accepted {fields['accepted']} of {n}")
    return int(pid), {k: int(v) for k, v in fields.items()}


# ---- callgrind ----------------------------------------------------------


def parse_callgrind(path):
    """Returns (total Ir, {fn: self Ir}, {(caller, callee): call Ir})."""
    names = {"fn": {}}
    self_cost = {}
    calls = {}
    total = 0
    npos = 1
    fn = None
    callee = None
    in_call = False
    name_re = re.compile(r"\((\d+)\)(?: (.*))?")

    def name(kind, text):
        m = name_re.fullmatch(text)
        if not m:
            return text
        table = names.setdefault(kind, {})
        if m.group(2) is not None:
            table[m.group(1)] = m.group(2)
        return table.get(m.group(1), text)

    with open(path, errors="replace") as f:
        for line in f:
            c = line[:1]
            if c.isdigit() or c in "+-*":
                parts = line.split()
                cost = int(parts[npos]) if len(parts) > npos else 0
                if in_call:
                    key = (fn, callee)
                    calls[key] = calls.get(key, 0) + cost
                    in_call = False
                else:
                    self_cost[fn] = self_cost.get(fn, 0) + cost
                continue
            if line.startswith("fn="):
                fn = name("fn", line[3:].rstrip("\n"))
            elif line.startswith("cfn="):
                callee = name("fn", line[4:].rstrip("\n"))
            elif line.startswith("calls="):
                in_call = True
            elif line.startswith("positions:"):
                npos = len(line.split()) - 1
            elif line.startswith("totals:") or line.startswith("summary:"):
                total = int(line.split()[1])
            elif line.startswith(("ob=", "cob=", "fl=", "fi=", "fe=", "cfi=",
                                  "cfl=")):
                # file and object names: only their compression tables
                kind = line.split("=", 1)[0]
                name("ob" if kind in ("ob", "cob") else "fl",
                     line.split("=", 1)[1].rstrip("\n"))
    return total, self_cost, calls


def same_function(name, wanted):
    """Whether callgrind's `name` is `wanted`, with any generic arguments."""
    return name == wanted or name.startswith((wanted + "<", wanted + "::<"))


def callgrind_figures(path):
    total, self_cost, calls = parse_callgrind(path)
    out_calls = {}
    for (caller, callee), cost in calls.items():
        if caller != callee:
            out_calls[caller] = out_calls.get(caller, 0) + cost

    def inclusive(wanted):
        return sum(self_cost.get(f, 0) + out_calls.get(f, 0)
                   for f in set(self_cost) | set(out_calls)
                   if same_function(f, wanted))

    unref = sum(cost for (caller, callee), cost in calls.items()
                if callee == UNREF_FUNC and caller not in (ACCEPT_FUNC,
                                                           UNREF_FUNC))
    return {
        "total": total,
        "entry": max(inclusive(f) for f in ENTRY_FUNCS),
        "accept": inclusive(ACCEPT_FUNC),
        "finalize": unref,
        "callback": inclusive(CALLBACK_FUNC),
    }


def run_callgrind(mode, transport, pattern, n, workdir):
    out = os.path.join(workdir, "callgrind.out.%p")
    tool = ["valgrind", "--tool=callgrind", "--quiet",
            f"--callgrind-out-file={out}"]
    pid, done = serve(mode["binary"], tool, mode["server"], transport,
                      pattern, n, workdir)
    path = out.replace("%p", str(pid))
    figures = callgrind_figures(path)
    if mode["kind"] == "listener" and not (figures["entry"]
                                           and figures["accept"]):
        raise Failure(f"{mode['name']}: no watch callback ({', '.join(ENTRY_FUNCS)}) "
                      f"or no {ACCEPT_FUNC} in the callgrind profile: the "
                      "function names changed; update measure.py")
    os.unlink(path)
    figures.update(done)
    return figures


# ---- strace -------------------------------------------------------------


def parse_strace_summary(path):
    """{syscall: calls} from `strace -c` output."""
    counts = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) < 5 or not parts[0][0].isdigit():
                continue
            name = parts[-1]
            if name == "total":
                continue
            counts[name] = int(parts[3])
    return counts


def run_strace(mode, transport, pattern, n, workdir):
    out = os.path.join(workdir, "strace.txt")
    tool = ["strace", "-f", "-c", "-o", out]
    _, done = serve(mode["binary"], tool, mode["server"], transport, pattern,
                    n, workdir)
    counts = parse_strace_summary(out)
    os.unlink(out)
    return counts, done


# ---- the wall-clock rounds ---------------------------------------------


def wall_clock(binaries, modes, rounds, seq, burst):
    """{(name, transport, pattern): {wall_us, cpu_us, wakeups}}, medians
    per client over the rounds."""
    samples = {}
    for r in range(rounds):
        for binary in binaries:
            names = [m["server"] for m in modes if m["binary"] == binary]
            if not names:
                continue
            unique = {m["server"]: m["name"] for m in modes
                      if m["binary"] == binary}
            cmd = [binary, "--runs", "1", "--results", "--servers",
                   ",".join(names), str(seq), str(burst)]
            print(f"wall clock round {r + 1}/{rounds}: "
                  f"{os.path.basename(binary)} ({', '.join(names)})",
                  flush=True)
            res = subprocess.run(cmd, capture_output=True, text=True,
                                 timeout=RUN_TIMEOUT)
            if res.returncode != 0:
                raise Failure(f"{' '.join(cmd)}: exit {res.returncode}\n"
                              f"{res.stderr.strip()}")
            for line in res.stdout.splitlines():
                if not line.startswith("result "):
                    continue
                f = dict(kv.split("=") for kv in line.split()[1:])
                n = int(f["clients"])
                key = (unique[f["server"]], f["transport"], f["pattern"])
                samples.setdefault(key, []).append({
                    "wall_us": int(f["wall_ns"]) / 1e3 / n,
                    "cpu_us": int(f["cpu_ns"]) / 1e3 / n,
                    "wakeups": int(f["dispatching"]) / n,
                })
    return {key: {k: statistics.median(s[k] for s in v) for k in v[0]}
            for key, v in samples.items()}


# ---- the report ---------------------------------------------------------


def per_client(a, b, n1, n2):
    return (b - a) / (n2 - n1)


def fmt(v, spec):
    if v is None:
        return "-".rjust(int(re.match(r"\d*", spec).group() or 0))
    return format(v, spec)


def print_table(results, sizes, rounds):
    print()
    print(f"Per accepted client; wall clock: median of {rounds} rounds; "
          f"counts: difference of {sizes['seq']} (seq) or {sizes['burst']} "
          "(burst) clients.")
    head = (f"{'server':26} {'us':>7} {'vs raw':>6} {'CPU us':>7} "
            f"{'vs raw':>6} {'instr':>7} {'own':>6} {'accept':>6} "
            f"{'final':>6} {'loop':>6} {'sysc':>5} {'wake':>6}")
    for t in TRANSPORTS:
        for p in PATTERNS:
            rows = [r for r in results
                    if r["transport"] == t and r["pattern"] == p]
            if not rows:
                continue
            print(f"\n{t} {p}")
            print("  " + head)
            for r in rows:
                print(f"  {r['label'][:26]:26} {fmt(r['wall_us'], '7.2f')} "
                      f"{fmt(r['wall_ratio'], '6.2f')} "
                      f"{fmt(r['cpu_us'], '7.2f')} "
                      f"{fmt(r['cpu_ratio'], '6.2f')} "
                      f"{fmt(r['instructions'], '7.0f')} "
                      f"{fmt(r['listener_own'], '6.0f')} "
                      f"{fmt(r['host_accept'], '6.0f')} "
                      f"{fmt(r['host_finalize'], '6.0f')} "
                      f"{fmt(r['loop'], '6.0f')} "
                      f"{fmt(r['syscalls'], '5.2f')} "
                      f"{fmt(r['wakeups'], '6.3f')}")
    print("\nus, CPU us: wall-clock and server-thread CPU time; vs raw: "
          "ratio to raw epoll+accept4.\ninstr: user-space instructions "
          "(callgrind), whole server process; own: the listener's own\n"
          "share (its watch callback less accept, finalize and the "
          "callback); accept, final: the\nhost's qio_channel_socket_accept "
          "and the client's finalize; loop: instr less the watch\n"
          "callback.  sysc: system calls (strace -f -c), wake: loop "
          "iterations that accepted a client.")


def syscall_summary(per):
    return ", ".join(f"{k} {v:.2f}" for k, v in
                     sorted(per.items(), key=lambda kv: -kv[1]) if v >= 0.005)


def main():
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binaries", nargs="+", metavar="[TAG=]BENCH-ACCEPT")
    ap.add_argument("--out", default="measure",
                    help="writes OUT.json and OUT.csv (default: ./measure)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="wall-clock rounds (default 3)")
    ap.add_argument("--wall-seq", type=int, default=2000,
                    help="sequential clients per wall-clock run")
    ap.add_argument("--wall-burst", type=int, default=2000,
                    help="queued clients per wall-clock run")
    ap.add_argument("--seq-sizes", default="256,512",
                    help="N1,N2 of the counted sequential runs")
    ap.add_argument("--burst-sizes", default="1024,2048",
                    help="N1,N2 of the counted burst runs")
    ap.add_argument("--servers", help="comma-separated server names")
    ap.add_argument("--transports", default=",".join(TRANSPORTS))
    ap.add_argument("--patterns", default=",".join(PATTERNS))
    ap.add_argument("--no-wall", action="store_true")
    ap.add_argument("--no-callgrind", action="store_true")
    ap.add_argument("--no-strace", action="store_true")
    args = ap.parse_args()

    sizes = {}
    for p, spec in (("seq", args.seq_sizes), ("burst", args.burst_sizes)):
        n1, n2 = (int(x) for x in spec.split(","))
        if not 0 < n1 < n2:
            ap.error(f"--{p}-sizes: want N1,N2 with 0 < N1 < N2")
        sizes[p] = (n1, n2)
    transports = [t for t in args.transports.split(",") if t in TRANSPORTS]
    patterns = [p for p in args.patterns.split(",") if p in PATTERNS]
    wanted = set(args.servers.split(",")) if args.servers else None

    modes = []
    seen = set()
    binaries = []
    for arg in args.binaries:
        tag, _, binary = arg.rpartition("=")
        binary = os.path.abspath(binary)
        binaries.append(binary)
        listing = subprocess.run([binary, "--list"], capture_output=True,
                                 text=True, check=True).stdout
        for line in listing.splitlines():
            server, label, kind = line.split("\t")
            name, shown = server, label
            if tag and kind == "listener":
                name, shown = f"{tag}:{server}", f"{tag} {label}"
            if name in seen or (wanted and server not in wanted
                                and name not in wanted):
                continue
            seen.add(name)
            modes.append({"binary": binary, "server": server, "name": name,
                          "label": shown, "kind": kind})
    if not modes:
        ap.error("no server to measure")
    binaries = list(dict.fromkeys(binaries))

    tools = {"callgrind": not args.no_callgrind and shutil.which("valgrind"),
             "strace": not args.no_strace and shutil.which("strace")}
    for tool, ok in tools.items():
        if not ok and not getattr(args, "no_" + tool):
            print(f"measure.py: {tool} not found: no {tool} figures "
                  "(scripts/bootstrap.sh installs it)", file=sys.stderr)

    try:
        wall = {} if args.no_wall else wall_clock(
            binaries, modes, args.rounds, args.wall_seq, args.wall_burst)
        counted = {}
        with tempfile.TemporaryDirectory(prefix="measure-") as workdir:
            for t in transports:
                for p in patterns:
                    n1, n2 = sizes[p]
                    for m in modes:
                        key = (m["name"], t, p)
                        c = counted[key] = {}
                        print(f"counting {m['name']} {t} {p} "
                              f"({n1}, {n2} clients)", flush=True)
                        if tools["callgrind"]:
                            a = run_callgrind(m, t, p, n1, workdir)
                            b = run_callgrind(m, t, p, n2, workdir)
                            c["cg"] = {k: per_client(a[k], b[k], n1, n2)
                                       for k in a}
                        if tools["strace"]:
                            (sa, da) = run_strace(m, t, p, n1, workdir)
                            (sb, db) = run_strace(m, t, p, n2, workdir)
                            c["syscalls"] = {
                                k: per_client(sa.get(k, 0), sb.get(k, 0),
                                              n1, n2)
                                for k in set(sa) | set(sb)}
                            c["strace_done"] = {
                                k: per_client(da[k], db[k], n1, n2)
                                for k in da}
    except Failure as e:
        print(f"measure.py: FAILED: {e}", file=sys.stderr)
        return 1

    results = []
    for t in transports:
        for p in patterns:
            raw = wall.get(("raw", t, p))
            for m in modes:
                key = (m["name"], t, p)
                w = wall.get(key)
                c = counted.get(key, {})
                cg = c.get("cg")
                listener = cg is not None and m["kind"] == "listener"
                wake = cg or c.get("strace_done")
                row = {
                    "server": m["name"], "label": m["label"],
                    "kind": m["kind"],
                    "binary": os.path.basename(m["binary"]),
                    "transport": t, "pattern": p,
                    "wall_us": w and w["wall_us"],
                    "wall_ratio": w and raw and w["wall_us"] / raw["wall_us"],
                    "cpu_us": w and w["cpu_us"],
                    "cpu_ratio": w and raw and w["cpu_us"] / raw["cpu_us"],
                    "wall_wakeups": w and w["wakeups"],
                    "instructions": cg and cg["total"],
                    "listener_entry": cg["entry"] if listener else None,
                    "host_accept": cg["accept"] if listener else None,
                    "host_finalize": cg["finalize"] if listener else None,
                    "callback": cg["callback"] if listener else None,
                    "listener_own": (cg["entry"] - cg["accept"]
                                     - cg["finalize"] - cg["callback"]
                                     if listener else None),
                    "loop": cg["total"] - cg["entry"] if listener else None,
                    "syscalls": (sum(c["syscalls"].values())
                                 if "syscalls" in c else None),
                    "syscall_breakdown": (syscall_summary(c["syscalls"])
                                          if "syscalls" in c else None),
                    "wakeups": wake and wake["dispatching"],
                    "iterations": wake and wake["iterations"],
                }
                results.append(row)

    print_table(results, sizes, args.rounds)
    print("\nsystem calls per client:")
    for r in results:
        if r["syscall_breakdown"] is not None:
            print(f"  {r['transport']:4} {r['pattern']:5} {r['label']:26} "
                  f"{r['syscall_breakdown']}")

    report = {
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                    "processor": platform.processor() or platform.machine()},
        "binaries": args.binaries,
        "rounds": args.rounds,
        "wall_clients": {"seq": args.wall_seq, "burst": args.wall_burst},
        "count_sizes": sizes,
        "results": results,
    }
    with open(args.out + ".json", "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    with open(args.out + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(results[0]))
        w.writeheader()
        w.writerows(results)
    print(f"\nwrote {args.out}.json and {args.out}.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
