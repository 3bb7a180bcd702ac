"""Helpers of scripts/bench.sh (run with the bench venv's Python, which has boto3):

  bench_peers.py make-data WORK SEQ_MIB HUGE_MIB FILES STAT_FILES UNTAR_FILES REPO_FILES READER_MIB BIGDIR_FILES
      writes the local copies under WORK/local, the tar source and the git source, and
      uploads the objects to the bucket (endpoint and keys from the environment)
  bench_peers.py wait-objects PREFIX COUNT LIMIT_SECONDS
      returns once the bucket lists COUNT objects (not directory markers) under PREFIX;
      exit status 1 after LIMIT_SECONDS
  bench_peers.py list-time PREFIX
      prints the seconds that the ListObjectsV2 pages of PREFIX (Delimiter=/) take alone
  bench_peers.py report WORK ROWS_FILE CHART_PATH
      reads WORK/res/ROW/SYSTEM (one value per round) and prints the Markdown table;
      writes the chart when matplotlib is there
"""

import concurrent.futures as cf
import io
import os
import random
import statistics
import sys
import time

SYSTEMS = ["s3files", "rclone", "s3fs", "local"]
PEERS = ["rclone", "s3fs"]
LIMIT = os.environ.get("S3FILES_BENCH_LIMIT", "?")
WORDS = ["alpha", "beta", "gamma", "delta", "kappa", "omega", "sigma", "tau", "fn", "let"]


def client():
    import boto3

    return boto3.client(
        "s3", endpoint_url=os.environ["GARAGE_ENDPOINT"], region_name="us-east-1"
    )


class RandomStream(io.RawIOBase):
    """SIZE random bytes as a stream, so a huge object needs no temporary file."""

    def __init__(self, size):
        self.left = size

    def readable(self):
        return True

    def readinto(self, buf):
        n = min(len(buf), self.left, 8 << 20)
        buf[:n] = os.urandom(n)
        self.left -= n
        return n


def text_file(rng, needle_every, i, lo_lines, hi_lines):
    lines = [" ".join(rng.choice(WORDS) for _ in range(10)) for _ in range(rng.randint(lo_lines, hi_lines))]
    if i % needle_every == 0:
        lines.append("needle found here")
    return ("\n".join(lines) + "\n").encode()


def write(path, body):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(body)


def make_data(work, seq_mib, huge_mib, files, stat_files, untar_files, repo_files, reader_mib, bigdir_files):
    from boto3.s3.transfer import TransferConfig

    s3 = client()
    cfg = TransferConfig(multipart_chunksize=64 << 20, max_concurrency=4)
    local = os.path.join(work, "local")
    rng = random.Random(7)

    def big_local(name, mib):
        path = os.path.join(local, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            for _ in range(mib):
                f.write(os.urandom(1 << 20))
        s3.upload_file(path, "bench", name, Config=cfg)

    big_local("seq.bin", seq_mib)
    big_local("random.bin", 64)
    for i in range(8):
        big_local(f"par/f{i}", reader_mib)
    s3.upload_fileobj(RandomStream(64 << 20), "bench", "random-cold.bin", Config=cfg)
    if huge_mib != seq_mib:  # else bench.sh streams seq.bin (a fresh mount: cold), saving disk
        s3.upload_fileobj(RandomStream(huge_mib << 20), "bench", "huge.bin", Config=cfg)

    # grep tree: 1-6 KiB text files in 20 directories, one in 50 holding the needle.
    items = [(f"tree/d{i % 20:02d}/f{i:05d}.txt", text_file(rng, 50, i, 20, 120)) for i in range(files)]
    # stat tree: 100-byte files, 100 to a directory (a source tree's shape, for lstat).
    items += [(f"stat/d{i // 100:03d}/f{i:05d}", b"x" * 100) for i in range(stat_files)]
    # big directory: one flat prefix of 10-byte objects.
    items += [(f"big/f{i:06d}", b"0123456789") for i in range(bigdir_files)]
    for key, body in items:
        write(os.path.join(local, key), body)
    with cf.ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda kb: s3.put_object(Bucket="bench", Key=kb[0], Body=kb[1]), items))

    # Sources of the tarball and of the git repository: source-like text files of
    # 0.1-16 KiB, 20 to a directory, two levels deep.
    def source_tree(root, n, seed):
        r = random.Random(seed)
        for i in range(n):
            path = os.path.join(root, f"m{i // 400:02d}", f"s{(i // 20) % 20:02d}", f"f{i:05d}.rs")
            write(path, text_file(r, 40, i, 2, 250))

    source_tree(os.path.join(work, "untar-src"), untar_files, 11)
    source_tree(os.path.join(work, "repo-src"), repo_files, 13)


def wait_objects(prefix, count, limit):
    s3 = client()
    deadline = time.monotonic() + limit
    while True:
        seen = 0
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix=prefix):
            seen += sum(1 for o in page.get("Contents", []) if not o["Key"].endswith("/"))
        if seen >= count:
            return 0
        if time.monotonic() > deadline:
            print(f"wait-objects: {seen} of {count} objects under {prefix} after {limit} s", file=sys.stderr)
            return 1
        time.sleep(0.2)


def list_time(prefix):
    s3 = client()
    started = time.monotonic()
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix=prefix, Delimiter="/")
    keys = sum(len(page.get("Contents", [])) for page in pages)
    print(f"{time.monotonic() - started:.4f} {keys}")


def read_values(work, row, system):
    """Per-round values: floats, or None for a failed round (None list if never run)."""
    path = os.path.join(work, "res", row, system)
    if not os.path.exists(path):
        return None
    values = []
    for line in open(path).read().split():
        try:
            values.append(float(line))
        except ValueError:
            values.append(line)  # "failed", "timeout" or "skipped"
    return values


def numbers(values):
    return None if values is None else [v if isinstance(v, float) else None for v in values]


def fmt(v, unit):
    if unit == "us":
        return f"{v:,.1f}" if v < 100 else f"{v:,.0f}"
    if unit == "s":
        return f"{v:.3f}" if v < 10 else f"{v:.1f}"
    if unit == "x":
        return f"{v:.2f}"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def cell(values, unit):
    if values is None:
        return "-", None
    ok = [v for v in values if isinstance(v, float)]
    if not ok:
        if "timeout" in values:
            return f"failed (> {LIMIT} s)", None
        if "skipped" in values:
            return "skipped", None
        return "failed", None
    med = statistics.median(ok)
    text = f"{fmt(med, unit)} {unit}" if unit != "x" else f"{fmt(med, unit)}x"
    if len(ok) > 1:
        text += f" ({fmt(min(ok), unit)}-{fmt(max(ok), unit)})"
    if len(ok) < len(values):
        text += f", {len(values) - len(ok)} failed"
    return text, med


def ratios(a, b):
    """Per-round quotients a/b where both rounds succeeded."""
    if a is None or b is None:
        return []
    return [x / y for x, y in zip(a, b) if x is not None and y is not None and y > 0]


def ratio_text(rs):
    if not rs:
        return "-"
    text = f"{statistics.median(rs):.2f}x"
    if len(rs) > 1:
        text += f" ({min(rs):.2f}-{max(rs):.2f})"
    return text


def report(work, rows_file, chart):
    rows = [line.rstrip("\n").split("|") for line in open(rows_file) if line.strip()]
    head = ["Workload", "s3files", "rclone", "s3fs", "local / ref", "s3files / local", "s3files vs best peer", "Target"]
    out = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    chart_rows = []
    for row, label, unit, better, target in rows:
        raw = {s: read_values(work, row, s) for s in SYSTEMS}
        cells = {s: cell(raw[s], unit) for s in SYSTEMS}
        vals = {s: numbers(raw[s]) for s in SYSTEMS}
        # s3files / local as the measured quantity's quotient (a time ratio for times, a
        # throughput ratio for throughputs), as the targets are written.
        vs_local = ratio_text(ratios(vals["s3files"], vals["local"]))
        peers = [(p, cells[p][1]) for p in PEERS if cells[p][1] is not None]
        mine = cells["s3files"][1]
        if mine is None or not peers or mine <= 0:
            vs_peer = "-"
        else:
            pick = min if better == "lower" else max
            best, value = pick(peers, key=lambda pv: pv[1])
            factor = value / mine if better == "lower" else mine / value
            if factor >= 1:
                vs_peer = f"{factor:.1f}x ahead of {best}"
            else:
                vs_peer = f"{1 / factor:.1f}x behind {best}"
        out.append(
            "| " + " | ".join([label] + [cells[s][0] for s in SYSTEMS] + [vs_local, vs_peer, target]) + " |"
        )
        if cells["local"][1] and unit != "x":
            # The chart shows every system as its slowdown against local disk (or the
            # reference): times over local's time, local's throughput over theirs.
            base = cells["local"][1]
            slow = {}
            for s in ["s3files", "rclone", "s3fs"]:
                v = cells[s][1]
                slow[s] = (v / base if better == "lower" else base / v) if v else None
            chart_rows.append((label, slow, {s: cells[s][0] for s in SYSTEMS}))
    print("\n".join(out))
    if chart:
        draw(chart_rows, chart)


def draw(chart_rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: matplotlib missing, no chart", file=sys.stderr)
        return
    import textwrap

    systems = ["s3files", "rclone", "s3fs"]
    colours = {"s3files": "#1f77b4", "rclone": "#ff7f0e", "s3fs": "#2ca02c"}
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(chart_rows) + 2), 6.5))
    width = 0.27
    for k, s in enumerate(systems):
        xs, hs = [], []
        for i, (_, slow, texts) in enumerate(chart_rows):
            x = i + (k - 1) * width
            if slow[s] is not None:
                xs.append(x)
                hs.append(slow[s])
            elif texts[s] not in ("-",):
                ax.text(x, 1.0, texts[s].split(" ")[0], rotation=90, ha="center", va="bottom", fontsize=7)
        ax.bar(xs, hs, width, label=s, color=colours[s])
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("slowdown vs local disk (1 = local; lower is better)")
    ax.set_xticks(range(len(chart_rows)))
    ax.set_xticklabels([textwrap.fill(r[0].replace("`", ""), 16) for r in chart_rows], fontsize=7)
    server = "moto" if os.environ.get("S3FILES_BENCH_SERVER") == "moto" else "Garage"
    ax.set_title(f"scripts/bench.sh: each system against local disk, one {server} server (medians)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"bench: chart written to {path}", file=sys.stderr)


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "make-data":
        make_data(args[0], *map(int, args[1:]))
    elif cmd == "wait-objects":
        sys.exit(wait_objects(args[0], int(args[1]), float(args[2])))
    elif cmd == "list-time":
        list_time(args[0])
    elif cmd == "report":
        report(args[0], args[1], args[2] if len(args) > 2 else "")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
