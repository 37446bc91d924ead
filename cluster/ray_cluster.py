"""Python side of the SLURM scripts in cluster/: the steps that are awkward or fragile in shell.

Standard library, Ray, and two light modules of this repository (dqlray.procs, dqlray.tuning.local_ray,
imported from the checkout, so the package need not be installed). Every subcommand prints its errors
with the SLURM node name; the exit code says what happened (0 ok, 1 failure, 2 usage, 3 a Ray step
died, 4 timeout).

    python cluster/ray_cluster.py ports --first PORT --size N --slots K --start-slot S
    python cluster/ray_cluster.py token FILE
    python cluster/ray_cluster.py wait --address IP:PORT --nodes N --cpus C --gpus G \
        --timeout SECONDS --watch NODE=PID [--watch NODE=PID ...]
    python cluster/ray_cluster.py procs --tag TAG --path TMPDIR      # list
    python cluster/ray_cluster.py kill --tag TAG --path TMPDIR       # stop and verify
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for dqlray.procs
from dqlray.procs import process_alive, stop_processes, tagged_processes  # noqa: E402
from dqlray.tuning.local_ray import TAG_VAR, write_token  # noqa: E402

EXIT_STEP_DIED = 3
EXIT_TIMEOUT = 4


def _node() -> str:
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]


def _say(msg: str) -> None:
    print(f"dqlray[{_node()}]: {msg}", flush=True)


def _fail(msg: str, code: int = 1) -> int:
    print(f"dqlray[{_node()}]: ERROR: {msg}", file=sys.stderr, flush=True)
    return code


# ---------------------------------------------------------------- ports
def _port_free(port: int) -> bool:
    """True if a server could bind ``port`` on every interface (TCP), like Ray's will."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def cmd_ports(args: argparse.Namespace) -> int:
    """Print the first port of the first block of ``size`` free ports, trying the job's own slot
    first and then the following ones (jobs sharing a node collide only if their ids map to the
    same slot, and then the probe moves one of them on)."""
    for i in range(args.slots):
        slot = (args.start_slot + i) % args.slots
        first = args.first + slot * args.size
        if all(_port_free(p) for p in range(first, first + args.size)):
            print(first)
            return 0
    return _fail(
        f"no block of {args.size} free ports in {args.first}-{args.first + args.slots * args.size - 1}; "
        "set DQLRAY_PORT_FIRST to another range"
    )


# ---------------------------------------------------------------- token
def cmd_token(args: argparse.Namespace) -> int:
    """Write a fresh Ray auth token (Ray's own format: 64 hex digits) to a new 0600 file."""
    write_token(args.file)
    return 0


# ---------------------------------------------------------------- wait
def _step_alive(pid: int) -> bool:
    return process_alive(pid)  # an exited but not yet reaped srun is a zombie: not alive


def _dead_steps(watch: dict[str, int]) -> list[str]:
    return [node for node, pid in watch.items() if not _step_alive(pid)]


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _table(nodes: list[dict], head_ip: str) -> str:
    rows = [("node", "address", "role", "CPUs", "GPUs")]
    cpus = gpus = 0.0
    for n in sorted(nodes, key=lambda n: (n["NodeManagerAddress"] != head_ip, n.get("NodeName", ""))):
        res = n.get("Resources", {})
        c, g = res.get("CPU", 0), res.get("GPU", 0)
        cpus, gpus = cpus + c, gpus + g
        role = "head" if n["NodeManagerAddress"] == head_ip and "node:__internal_head__" in res else "worker"
        rows.append((n.get("NodeName", "?"), n["NodeManagerAddress"], role, f"{c:g}", f"{g:g}"))
    rows.append(("total", f"{len(nodes)} nodes", "", f"{cpus:g}", f"{gpus:g}"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  " + "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def cmd_wait(args: argparse.Namespace) -> int:
    """Poll until the Ray cluster has every node and the expected CPUs and GPUs; fail fast
    (naming the node) when one of the watched srun steps has ended, or after the timeout."""
    watch = {}
    for item in args.watch:
        node, _, pid = item.rpartition("=")
        watch[node] = int(pid)
    host, _, port = args.address.rpartition(":")
    deadline = time.monotonic() + args.timeout

    def died() -> int:
        dead = _dead_steps(watch)
        if not dead:
            return 0
        return _fail(
            "Ray failed to start on node(s) " + ", ".join(dead) + ": the srun step exited before the "
            "cluster was ready; its error is above in this log",
            EXIT_STEP_DIED,
        )

    while not _tcp_open(host, int(port)):
        if rc := died():
            return rc
        if time.monotonic() > deadline:
            return _fail(f"the Ray head at {args.address} did not open within {args.timeout:g} s", EXIT_TIMEOUT)
        time.sleep(0.2)

    import ray  # only now: importing Ray takes a second or two

    ray.init(address=args.address, logging_level="WARNING", log_to_driver=False, include_dashboard=False)
    try:
        expected = set(watch)
        while True:
            nodes = [n for n in ray.nodes() if n.get("Alive")]
            names = {n.get("NodeName") for n in nodes}
            cpus = sum(n.get("Resources", {}).get("CPU", 0) for n in nodes)
            gpus = sum(n.get("Resources", {}).get("GPU", 0) for n in nodes)
            if len(nodes) >= args.nodes and cpus >= args.cpus and gpus >= args.gpus:
                _say(
                    f"Ray cluster ready: {len(nodes)} nodes, {cpus:g} CPUs, {gpus:g} GPUs "
                    f"(waited {args.timeout - (deadline - time.monotonic()):.1f} s)"
                )
                print(_table(nodes, host), flush=True)
                return 0
            if rc := died():
                return rc
            if time.monotonic() > deadline:
                missing = sorted(expected - names) or ["(all nodes joined)"]
                return _fail(
                    f"Ray cluster not ready after {args.timeout:g} s: {len(nodes)}/{args.nodes} nodes, "
                    f"{cpus:g}/{args.cpus} CPUs, {gpus:g}/{args.gpus} GPUs; not registered: "
                    + ", ".join(missing),
                    EXIT_TIMEOUT,
                )
            time.sleep(0.5)
    finally:
        ray.shutdown()


# ---------------------------------------------------------------- procs / kill
def job_processes(tag: str, path: str) -> dict[int, str]:
    """This job's Ray processes on this node: those started with ``DQLRAY_RAY_TAG=tag`` in their
    environment or with the job's temp dir in their command line, and all their descendants
    (Ray's dashboard workers rewrite their process title over the environment)."""
    return tagged_processes(TAG_VAR, tag, path=path)


def cmd_procs(args: argparse.Namespace) -> int:
    """Print this job's Ray processes on this node (pid and command line)."""
    for pid, cmd in job_processes(args.tag, args.path).items():
        print(pid, cmd[:200])
    return 0


def cmd_kill(args: argparse.Namespace) -> int:
    """SIGTERM this job's Ray processes on this node, SIGKILL what is left after the grace
    period, and verify that none is left. Never touches another job's Ray (no `ray stop`)."""
    procs = stop_processes(lambda: job_processes(args.tag, args.path), grace=args.grace)
    if procs:
        return _fail(f"{len(procs)} Ray processes of {args.tag} are still running: {sorted(procs)}")
    _say(f"no Ray process of {args.tag} left on this node")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("ports", help="find a block of free ports")
    p.add_argument("--first", type=int, required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--slots", type=int, required=True)
    p.add_argument("--start-slot", type=int, required=True)
    p.set_defaults(fn=cmd_ports)
    p = sub.add_parser("token", help="write a new Ray auth token to a 0600 file")
    p.add_argument("file")
    p.set_defaults(fn=cmd_token)
    p = sub.add_parser("wait", help="wait until the Ray cluster is complete")
    p.add_argument("--address", required=True)
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--cpus", type=float, required=True)
    p.add_argument("--gpus", type=float, default=0)
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--watch", action="append", default=[], metavar="NODE=PID")
    p.set_defaults(fn=cmd_wait)
    for name, fn in (("procs", cmd_procs), ("kill", cmd_kill)):
        p = sub.add_parser(name, help=f"{name} this job's Ray processes on this node")
        p.add_argument("--tag", required=True)
        p.add_argument("--path", required=True)
        p.add_argument("--grace", type=float, default=10.0)
        p.set_defaults(fn=fn)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
