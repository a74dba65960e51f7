"""Cluster benchmark: instances/s for K concurrent storescu senders into 1, 2 and 3 cluster nodes.

    python benchmarks/cluster.py [--instances N] [--senders K] [--size PX] [--nodes 1,2,3] [--out DIR]

Every run uses a throwaway PostgreSQL server (Debian's binaries, as the tests do), a fresh database
and a fresh shared storage root per node count. In front of the nodes: Debian's HAProxy in TCP mode
(round robin per association) when /usr/sbin/haproxy exists, else the senders are spread round robin
over the nodes' ports. Each sender is one DCMTK storescu association with its own studies. Completion
waits longer than the run, so the numbers are ingest (receive, fsync, index) only. Orthanc is not
compared: it is not installed here (Debian `orthanc` + `orthanc-postgresql` would be the peer).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest import make_set, send  # noqa: E402
from nodeutil import RunningNode, TcpBalancer  # noqa: E402
from pgutil import PostgresServer, server_binaries  # noqa: E402

def run(pg: PostgresServer, root: Path, n_nodes: int, batches: list[list[Path]]) -> tuple[str, float]:
    url = pg.new_database(f"bench{n_nodes}")
    shared = root / f"shared{n_nodes}"
    nodes = [RunningNode(root / f"n{n_nodes}-{i}", stable_seconds=600, sections={
        "storage": {"data_dir": str(shared), "database": url},
        "cluster": {"enabled": True, "node_name": f"node{i}"},
        "node": {"max_associations": 32},
    }) for i in range(n_nodes)]
    proxy: TcpBalancer | None = None
    try:
        for node in nodes:
            node.start(timeout=60)
        if TcpBalancer.available():
            proxy = TcpBalancer(root / f"lb{n_nodes}", [n.port for n in nodes]).__enter__()
            targets, how = [proxy.port] * len(batches), "haproxy"
        else:
            targets, how = [nodes[i % n_nodes].port for i in range(len(batches))], "round robin"
        start = time.perf_counter()
        with ThreadPoolExecutor(len(batches)) as pool:
            for f in [pool.submit(send, port, "MSFOLLOWUP", b) for port, b in zip(targets, batches)]:
                f.result()
        return how, time.perf_counter() - start
    finally:
        if proxy is not None:
            proxy.__exit__()
        for node in nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.stop()
            if node._db is not None:
                node._db.dispose()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", type=int, default=400)
    ap.add_argument("--senders", type=int, default=4)
    ap.add_argument("--size", type=int, default=128, help="rows = columns of each instance")
    ap.add_argument("--nodes", default="1,2,3")
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    args = ap.parse_args()
    bindir = server_binaries()
    if bindir is None:
        print("PostgreSQL server binaries not installed (apt-get install postgresql)", file=sys.stderr)
        return 2
    root = args.out or Path(tempfile.mkdtemp(prefix="msf-cluster-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    pg = PostgresServer(bindir)
    pg.start()
    try:
        counts = [int(n) for n in args.nodes.split(",")]
        per = args.instances // args.senders
        batches = [make_set(root / f"set{k}", per, args.size, seed=500 + 40 * k) for k in range(args.senders)]
        results = [(n, *run(pg, root, n, batches)) for n in counts]
    finally:
        pg.stop()
        if args.out is None:
            shutil.rmtree(root, ignore_errors=True)
    total = per * args.senders
    print(f"\n{args.senders} concurrent storescu senders, {total} instances of {args.size}x{args.size} "
          f"(fsync and index on; one PostgreSQL, one shared storage root)")
    print(f"{'nodes':>5}  {'front':<12} {'seconds':>8} {'instances/s':>12} {'vs 1 node':>10}")
    base = None
    for n, how, seconds in results:
        rate = total / seconds
        base = base or rate
        print(f"{n:>5}  {how:<12} {seconds:>8.2f} {rate:>12.1f} {rate / base:>9.2f}x")
    print("orthanc: not installed (skipped)" if shutil.which("Orthanc") is None else
          "orthanc: installed but not driven by this benchmark")
    return 0


if __name__ == "__main__":
    sys.exit(main())
