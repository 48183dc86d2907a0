#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Plots measure.py's results: per accepted client, by server, for each
transport and pattern: user-space instructions (callgrind), system calls
(strace) and the server's CPU time as a ratio to the raw epoll+accept4
loop (wall-clock run).

    plot.py MEASURE.json [OUT.png]        (default: MEASURE.png)

Needs matplotlib (Debian: python3-matplotlib, which
`scripts/bootstrap.sh --plot` installs); if the running python3 lacks it,
the script runs itself again with /usr/bin/python3.  Run by hand; no test
depends on it.
"""

import json
import os
import sys


def import_pyplot():
    try:
        import matplotlib
    except ImportError:
        system = "/usr/bin/python3"
        if os.path.realpath(sys.executable) != os.path.realpath(system) \
                and os.path.exists(system) \
                and not os.environ.get("PLOT_PY_REEXEC"):
            os.environ["PLOT_PY_REEXEC"] = "1"
            os.execv(system, [system] + sys.argv)
        sys.exit("plot.py: needs matplotlib (scripts/bootstrap.sh --plot "
                 "installs python3-matplotlib)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


GROUPS = [("unix", "burst"), ("tcp", "burst"), ("unix", "seq"),
          ("tcp", "seq")]
PANELS = [
    ("instructions", "instructions per client (callgrind, whole server)",
     True),
    ("syscalls", "system calls per client (strace -f -c)", False),
    ("cpu_ratio", "server CPU time per client / raw epoll+accept4", False),
]


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__.strip())
    src = sys.argv[1]
    out = sys.argv[2] if len(sys.argv) == 3 else os.path.splitext(src)[0] + ".png"
    with open(src) as f:
        report = json.load(f)
    rows = report["results"]
    servers = []
    for r in rows:
        if r["label"] not in servers:
            servers.append(r["label"])
    groups = [g for g in GROUPS
              if any((r["transport"], r["pattern"]) == g for r in rows)]
    by_key = {(r["label"], r["transport"], r["pattern"]): r for r in rows}

    plt = import_pyplot()
    fig, axes = plt.subplots(len(PANELS), 1, figsize=(12, 12))
    width = 0.8 / len(servers)
    # Distinct colours for up to 20 servers (e.g. a run that also measures
    # an earlier commit's builds).
    colors = plt.get_cmap("tab10" if len(servers) <= 10 else "tab20").colors
    for ax, (field, title, log) in zip(axes, PANELS):
        for i, label in enumerate(servers):
            xs, ys = [], []
            for g, (t, p) in enumerate(groups):
                r = by_key.get((label, t, p))
                if r and r.get(field) is not None:
                    xs.append(g + (i - (len(servers) - 1) / 2) * width)
                    ys.append(r[field])
            bars = ax.bar(xs, ys, width, label=label,
                          color=colors[i % len(colors)])
            fmt = "{:,.0f}" if field == "instructions" else "{:.2f}"
            ax.bar_label(bars, [fmt.format(y) for y in ys], fontsize=6,
                         rotation=90, padding=2)
        ax.set_title(title, fontsize=10)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([f"{t} {p}" for t, p in groups])
        if log:
            ax.set_yscale("log")
            ax.set_ylim(top=ax.get_ylim()[1] * 4)
        else:
            ax.margins(y=0.25)
        if field == "cpu_ratio":
            ax.axhline(1, color="grey", linewidth=0.8)
        ax.grid(axis="y", alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=8, ncol=min(5, len(servers)),
               loc="upper center", bbox_to_anchor=(0.5, 0.955))
    m = report.get("machine", {})
    sizes = {k: "/".join(map(str, v))
             for k, v in report.get("count_sizes", {}).items()}
    fig.suptitle("bench-accept per accepted client: burst = queued before "
                 "the server runs, seq = one at a time\n"
                 f"{m.get('cpus', '?')} CPUs, Linux {m.get('kernel', '?')}; "
                 f"counts from the difference of {sizes.get('burst')} "
                 f"(burst), {sizes.get('seq')} (seq) clients; CPU ratio: "
                 f"median of {report.get('rounds')} rounds",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.935))
    fig.savefig(out, dpi=80)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
