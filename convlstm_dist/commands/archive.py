"""`convlstm-dist ingest` and `convlstm-dist archive-info`: build and inspect radar archives."""

from __future__ import annotations

import argparse
from convlstm_dist.data import (
    DEFAULT_CHUNKS, exists, get_reader, is_remote, merge_ranges, open_archive, parse_reader_options,
    quantity_of_variable, storage_options_for, summary, verify_archive,
)
from convlstm_dist.data.ingest import ingest

INGEST_HELP = """\
Decode radar files with READER and append them to the Zarr archive at --archive (a local
folder or s3://bucket/prefix.zarr). All files are decoded and checked first; nothing is written
if any file is corrupt or does not match the archive's grid/unit/projection. Frames already in
the archive are skipped; frames older than the archive's last time (not in it) are refused.

S3 credentials come from the AWS environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or
AWS_PROFILE, AWS_REGION, AWS_ENDPOINT_URL); --endpoint-url overrides the endpoint.

Readers: knmi_hdf5, fmi_pgm, odim_hdf5 (native), or pysteps:IMPORTER for any pysteps importer
(mch_gif, knmi_hdf5, fmi_pgm, opera_hdf5, ...). --reader-option KEY=VALUE (repeatable) passes
importer keyword arguments (numbers and true/false are parsed), plus the reader's own keys:
fn_pattern (strftime pattern of the file name giving the valid time; default from pysteps for
known importers), timestep_s, source, zr_a, zr_b.

examples:
  convlstm-dist ingest --reader knmi_hdf5 --archive workdir/knmi.zarr data/knmi/*.h5
  convlstm-dist ingest --reader pysteps:mch_gif --reader-option product=AQC --reader-option unit=mm \
      --reader-option accutime=5 --archive workdir/mch.zarr data/mch/20150515/AQC*.gif
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("ingest", help="decode radar files into a Zarr archive",
                              description=INGEST_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reader", required=True,
                   help="file reader: knmi_hdf5, fmi_pgm, odim_hdf5, or pysteps:IMPORTER (e.g. pysteps:mch_gif)")
    p.add_argument("--reader-option", action="append", default=[], metavar="KEY=VALUE",
                   help="option of a pysteps:IMPORTER reader (repeatable): importer keyword arguments, "
                        "or fn_pattern / timestep_s / source / zr_a / zr_b")
    p.add_argument("--archive", required=True, metavar="URL", help="archive folder or s3:// URL")
    p.add_argument("--endpoint-url", metavar="URL", help="S3 endpoint (default: AWS_ENDPOINT_URL / AWS)")
    p.add_argument("--chunk-time", type=int, default=DEFAULT_CHUNKS[0], metavar="N",
                   help=f"frames per chunk for a new archive (default {DEFAULT_CHUNKS[0]})")
    p.add_argument("--chunk-space", type=int, default=DEFAULT_CHUNKS[1], metavar="N",
                   help=f"chunk edge in pixels for a new archive (default {DEFAULT_CHUNKS[1]})")
    p.add_argument("--shard-time", type=int, default=None, metavar="N",
                   help="frames per Zarr shard (multiple of --chunk-time; default: no sharding). "
                        "A shard holds the whole grid, so fewer objects on S3")
    p.add_argument("--no-parallel", action="store_true", help="decode in this process, not on Ray")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--lock-timeout", type=float, default=600.0, metavar="S",
                   help="seconds to wait for another ingest writing the same archive (default 600); "
                        "one writer at a time, the other waits and then appends after it")
    p.add_argument("files", nargs="+", metavar="FILES", help="radar files to ingest")
    p.set_defaults(func=run_ingest)

    q = subparsers.add_parser("archive-info", help="summarise a Zarr radar archive",
                              description="Print time range, frame count, time step, gaps, chunking "
                                          "and statistics of an archive.")
    q.add_argument("url", metavar="URL", help="archive folder or s3:// URL")
    q.add_argument("--endpoint-url", metavar="URL", help="S3 endpoint (default: AWS_ENDPOINT_URL / AWS)")
    q.add_argument("--verify", action="store_true",
                   help="read every chunk (in parallel) and list the damaged ones with their time ranges; "
                        "exit status 1 when any is damaged")
    q.add_argument("--workers", type=int, default=8, metavar="N", help="parallel reads of --verify (default 8)")
    q.add_argument("--quiet", action="store_true", help="no progress bar (--verify)")
    q.set_defaults(func=run_archive_info)


def run_ingest(args) -> int:
    reader = get_reader(args.reader, parse_reader_options(args.reader_option))
    opts = storage_options_for(args.archive, args.endpoint_url)
    report = ingest(reader, args.files, args.archive, storage_options=opts,
                    chunks=(args.chunk_time, args.chunk_space, args.chunk_space),
                    shards=args.shard_time, parallel=not args.no_parallel, progress=not args.quiet,
                    lock_timeout_s=args.lock_timeout)
    print(report)
    return 0


def format_summary(s: dict) -> str:
    lines = [
        f"archive     {s['url']}",
        f"variable    {s['variable']} [{s['units']}]  source {s['attrs'].get('source')}  "
        f"Z-R a={s['attrs'].get('zr_a')} b={s['attrs'].get('zr_b')}",
        f"frames      {s['frames']}  grid {s['shape'][1]} x {s['shape'][2]}  "
        f"pixel {s['attrs'].get('pixel_size_m')} m",
        f"time        {s['first']} .. {s['last']}  step {s['timestep_s']} s",
        f"gaps        {len(s['gaps'])}" + "".join(f"\n  after {a} next {b} ({n} missing)"
                                                   for a, b, n in s["gaps"]),
        f"chunks      {s['chunks']}  shards {s['shards']}",
        f"projection  {s['attrs'].get('projection')}",
    ]
    if s["frames"]:
        lines.append(f"valid       mean valid fraction {s['mean_valid_fraction']:.4f}, "
                     f"max {s['max_value']} {s['units']}")
        thr_units = quantity_of_variable(s["variable"]).units
        unit = "" if thr_units == "1" else f" {thr_units}"  # dimensionless (intensity): no unit
        wet = s["wet_fraction"] or [float("nan")] * len(s["thresholds"])
        lines.append("wet         " + "  ".join(f">={t:g}{unit}: {w:.4f}" for t, w in zip(s["thresholds"], wet)))
    lines.append(f"attribution {s['attrs'].get('attribution')}")
    return "\n".join(lines)


def run_archive_info(args) -> int:
    opts = storage_options_for(args.url, args.endpoint_url)
    if is_remote(args.url):
        exists(args.url, opts)  # one request under a deadline: a silent endpoint fails in seconds, not minutes
    archive = open_archive(args.url, opts)
    if args.verify:
        return run_verify(archive, args.workers, not args.quiet)
    print(format_summary(summary(archive)))
    return 0


def run_verify(archive, workers: int, progress: bool) -> int:
    """``archive-info --verify``: every chunk read once; damaged ones listed; 1 if any."""
    from tqdm.auto import tqdm

    bar = tqdm(total=0, desc="verify", unit="chunk", disable=not progress)

    def step(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        damaged = verify_archive(archive, workers=max(1, workers), progress=step)
    finally:
        bar.close()
    if not damaged:
        print(f"verified {archive.url}: every chunk of {archive.n_frames} frames decodes")
        return 0
    times = archive.times
    print(f"{archive.url}: {len(damaged)} damaged chunk(s)")
    for d in damaged:
        print(f"  {d.describe()}")
    print("damaged time ranges:")
    for t0, t1 in merge_ranges(damaged):
        print(f"  {times[t0]} .. {times[t1 - 1]}  (frames {t0}..{t1 - 1})")
    print("re-ingest the files of those times into a new archive, or train with data.skip_damaged: true")
    return 1
