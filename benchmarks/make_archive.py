"""Build a large benchmark archive from real radar frames, advected and rotated over time.

    python benchmarks/make_archive.py [--frames 20000] [--url DIR_OR_S3_URL] [--size 512]
                                      [--shard-time 256] [--batch 512] [--seed 0]

The result is a normal project archive (``open_archive`` reads it; variable ``rain_mmh`` in mm/h,
NaN = no data, the usual statistics), written with the project's own writer API
(``create_archive`` + ``append_frames`` under ``writer_lock``) in large batches, 5-minute steps
without gaps from 2021-01-01. It is generated on demand and never committed.

How the rain fields are made, so that they compress like real radar:

* **Real frames.** The sources are the real radar events under ``../shared/data/radar``
  (relative to the repository root): KNMI 2010-08-26 (92 frames, mm/h), the three MeteoSwiss
  events (3 x 40 frames, mm per 5 min x 12) and the FMI event (40 frames, dBZ -> mm/h with its
  Z-R relation). Rates below 0.05 mm/h are set to 0 (FMI's -32 dBZ floor is not rain).
* **Episodes.** The archive is a sequence of episodes; each plays a span (>= 24 frames) of one
  event forward in time through a moving, rotating 1-km window: a random start angle and flip,
  an angular drift (up to +-0.5 degree per step), a translation (advection, up to 3 px = 3 km per
  step, i.e. up to 36 km/h on top of the storms' own motion) and an intensity factor
  (log-normal, sigma 0.3). Sampling is nearest-neighbour, so pixel values keep the source's
  quantisation (as a real product does). Consecutive episodes cross-fade over 6 frames, so no
  window sees a jump.
* **Dry spells.** ``--dry-share`` of the episodes (default 0.2) are rain-free, as real archives
  have dry periods; their frames are 0 inside the radar domain.
* **Radar domain.** A fixed no-data mask (NaN): the MeteoSwiss coverage (pixels valid in at
  least half of its frames), centre-cropped or padded to the grid (at 512x512: ~4 % NaN, the
  corners outside the composite).

Everything is drawn from ``--seed``: the same command builds the same archive byte for byte.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "radar"
T_START = np.datetime64("2021-01-01T00:00:00", "s")
STEP_S = 300
MIN_RAIN_MMH = 0.05
FADE = 6
DEFAULT_FRAMES = 20_000
DEFAULT_SIZE = 512
DEFAULT_CHUNKS = (16, 256, 256)
DEFAULT_SHARD_TIME = 256
DEFAULT_BATCH = 512


# ---------------------------------------------------------------------------------------------
# sources
# ---------------------------------------------------------------------------------------------

def load_events(data_dir: Path = DATA) -> tuple[list[np.ndarray], np.ndarray]:
    """The real events as float32 (T, H, W) mm/h with no-data -> 0, and the MeteoSwiss validity."""
    from pysteps.io import (
        importers,  # MeteoSwiss GIFs: pysteps' importer (see the folder's README)
    )

    from convlstm_dist.data import units as U
    from convlstm_dist.data.readers import get_reader

    events = []
    knmi = get_reader("knmi_hdf5")
    files = sorted((data_dir / "knmi").glob("*/RAD_NL25_RAP_5min_*.h5"))
    events.append(np.stack([knmi.read(f)[0] for f in files]))
    fmi = get_reader("fmi_pgm")
    frames = []
    for f in sorted((data_dir / "fmi").glob("*/*.pgm.gz")):
        a, meta = fmi.read(f)
        frames.append(U.dbz_to_rain_mmh(a, meta["zr_a"], meta["zr_b"]))
    events.append(np.stack(frames))
    mch_valid = []
    for d in sorted(p for p in (data_dir / "mch").iterdir() if p.is_dir()):
        fr = [importers.import_mch_gif(str(f), product="AQC", unit="mm", accutime=5.0)[0] * 12.0
              for f in sorted(d.glob("*.gif"))]
        ev = np.stack(fr).astype(np.float32)
        mch_valid.append(np.isfinite(ev))
        events.append(ev)
    if len(events) < 3:
        raise FileNotFoundError(f"radar sample events not found under {data_dir}")
    out = []
    for ev in events:
        ev = np.nan_to_num(ev.astype(np.float32), nan=0.0)
        ev[ev < MIN_RAIN_MMH] = 0.0
        out.append(np.ascontiguousarray(ev))
    valid = np.concatenate(mch_valid).mean(axis=0) >= 0.5
    return out, valid


def domain_mask(valid_src: np.ndarray, size: int) -> np.ndarray:
    """The source validity centre-cropped (or padded with no data) to size x size: True = radar data."""
    H, W = valid_src.shape
    out = np.zeros((size, size), dtype=bool)
    sy, sx = max(0, (H - size) // 2), max(0, (W - size) // 2)
    dy, dx = max(0, (size - H) // 2), max(0, (size - W) // 2)
    h, w = min(H, size), min(W, size)
    out[dy:dy + h, dx:dx + w] = valid_src[sy:sy + h, sx:sx + w]
    return out


# ---------------------------------------------------------------------------------------------
# episodes
# ---------------------------------------------------------------------------------------------

class Episode:
    """One span of one event seen through a moving, rotating window (or a dry spell)."""

    def __init__(self, rng: np.random.Generator, events: list[np.ndarray], dry_share: float, size: int):
        lengths = np.array([len(e) for e in events], dtype=float)
        self.dry = bool(rng.random() < dry_share)
        self.e = int(rng.choice(len(events), p=lengths / lengths.sum()))
        T, H, W = events[self.e].shape
        span = int(rng.integers(min(24, T), T + 1))
        self.first = int(rng.integers(0, T - span + 1))
        self.length = span if not self.dry else int(rng.integers(24, 97))
        self.angle = float(rng.uniform(0, 360))
        self.spin = float(rng.uniform(-0.5, 0.5))
        self.flip = bool(rng.random() < 0.5)
        v = rng.uniform(-3.0, 3.0, size=2)
        self.velocity = v
        # the window's centre in source pixels: near the wet centroid of the event, and staying
        # inside the grid for the whole episode
        wet = events[self.e].sum(axis=0) > 0
        cy, cx = (np.argwhere(wet).mean(axis=0) if wet.any() else np.array([H / 2, W / 2]))
        self.centre = np.array([cy, cx]) + rng.normal(0, 40, size=2) - v * self.length / 2
        self.scale = float(np.exp(rng.normal(0.0, 0.3)))
        self.size = size

    def frame(self, events: list[np.ndarray], k: int) -> np.ndarray:
        """Frame k (0-based) of the episode, float32 (size, size) mm/h, >= 0."""
        import cv2

        n = self.size
        if self.dry:
            return np.zeros((n, n), dtype=np.float32)
        src = events[self.e][self.first + min(k, self.length - 1)]
        th = np.deg2rad(self.angle + self.spin * k)
        c, s = np.cos(th), np.sin(th)
        fx = -1.0 if self.flip else 1.0
        cy, cx = self.centre + self.velocity * k
        # inverse map: src = R @ (dst - n/2) + centre, in (x, y) order for OpenCV
        m = np.array([[c * fx, -s, cx - (c * fx * n / 2 - s * n / 2)],
                      [s * fx, c, cy - (s * fx * n / 2 + c * n / 2)]], dtype=np.float64)
        out = cv2.warpAffine(src, m, (n, n), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
        if self.scale != 1.0:
            out *= np.float32(self.scale)
        return out


class FrameStream:
    """Frames one after another: episodes in sequence, each cross-fading into the next."""

    def __init__(self, events, valid_mask: np.ndarray, seed: int, dry_share: float, size: int):
        self.events, self.mask = events, valid_mask
        self.rng = np.random.default_rng([seed, 20_000])
        self.dry_share, self.size = dry_share, size
        self.cur = Episode(self.rng, events, dry_share, size)
        self.nxt = Episode(self.rng, events, dry_share, size)
        self.k = 0

    def next_frame(self) -> np.ndarray:
        cur = self.cur
        tail = cur.length - self.k  # frames of this episode left, including this one
        f = cur.frame(self.events, self.k)
        if tail <= FADE:  # cross-fade into the next episode over its first FADE frames
            w = (FADE - tail + 1) / (FADE + 1)
            f = (1 - w) * f + w * self.nxt.frame(self.events, FADE - tail)
        self.k += 1
        if self.k >= cur.length:
            self.cur, self.k = self.nxt, FADE  # the next one's first FADE frames were faded in
            self.nxt = Episode(self.rng, self.events, self.dry_share, self.size)
        f = np.where(self.mask, f, np.float32(np.nan)).astype(np.float32)
        return f

    def batch(self, n: int) -> np.ndarray:
        return np.stack([self.next_frame() for _ in range(n)])


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------

def grid_spec(size: int, seed: int):
    from convlstm_dist.data.archive import GridSpec

    coords = (np.arange(size, dtype=np.float64) + 0.5) * 1000.0
    return GridSpec(
        variable="rain_mmh", units="mm/h", zr_a=200.0, zr_b=1.6,
        projection="+proj=aeqd +lat_0=50 +lon_0=7 +x_0=0 +y_0=0 +units=m",
        pixel_size_m=1000.0, timestep_s=STEP_S,
        source=f"synthetic: KNMI/MeteoSwiss/FMI sample events advected and rotated "
               f"(benchmarks/make_archive.py, seed={seed})",
        shape=(size, size), y=coords[::-1].copy(), x=coords,
        attribution="Generated from radar data of KNMI and FMI (CC BY 4.0) and MeteoSwiss, via the "
                    "pysteps example data; a benchmark fixture, not for distribution")


def stored_bytes(url: str, storage_options: dict | None = None) -> int:
    """Bytes the archive takes on its storage (all objects under the URL)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return int(sum(v["size"] for v in fs.find(path, detail=True).values()))


def build(url: str, frames: int = DEFAULT_FRAMES, size: int = DEFAULT_SIZE, storage_options: dict | None = None,
          chunks=DEFAULT_CHUNKS, shard_time: int | None = DEFAULT_SHARD_TIME, batch: int = DEFAULT_BATCH,
          seed: int = 0, dry_share: float = 0.2, progress: bool = True) -> dict:
    """Write the archive at ``url`` (which must not exist); returns what was built and how long it took."""
    from convlstm_dist.data import units as U
    from convlstm_dist.data.archive import append_frames, create_archive
    from convlstm_dist.data.lock import writer_lock
    from convlstm_dist.data.storage import exists

    if exists(url, storage_options):
        raise SystemExit(f"{url} exists already: remove it or choose another --url")
    if shard_time and batch % shard_time:
        raise SystemExit(f"--batch {batch} must be a multiple of --shard-time {shard_time} (whole shards per write)")
    t_begin = time.perf_counter()
    events, valid_src = load_events()
    mask = domain_mask(valid_src, size)
    stream = FrameStream(events, mask, seed, dry_share, size)
    thr = U.thresholds_in_unit("rain_mmh", None, None)
    t_gen = t_stats = t_write = 0.0
    with writer_lock(url, storage_options) as lock:
        create_archive(url, grid_spec(size, seed), storage_options, chunks=chunks,
                       shards=shard_time if shard_time else None)
        done = 0
        while done < frames:
            n = min(batch, frames - done)
            t = time.perf_counter()
            block = stream.batch(n)
            t_gen += time.perf_counter() - t
            t = time.perf_counter()
            stats = U.frame_stats(block, thr)
            t_stats += time.perf_counter() - t
            times = (T_START + np.arange(done, done + n) * np.timedelta64(STEP_S, "s")).astype("int64")
            t = time.perf_counter()
            append_frames(url, storage_options, block, times, stats, expected_length=done, lock=lock)
            t_write += time.perf_counter() - t
            done += n
            if progress:
                el = time.perf_counter() - t_begin
                print(f"  {done}/{frames} frames, {el:.0f} s ({done / el:.0f} frames/s)", file=sys.stderr,
                      flush=True)
    seconds = time.perf_counter() - t_begin
    nbytes = stored_bytes(url, storage_options)
    raw = frames * size * size * 4
    return {"url": url, "frames": frames, "grid": [size, size], "chunks": list(chunks),
            "shard_time": shard_time, "seed": seed, "dry_share": dry_share, "seconds": round(seconds, 1),
            "seconds_generate": round(t_gen, 1), "seconds_stats": round(t_stats, 1),
            "seconds_write": round(t_write, 1), "frames_per_s": round(frames / seconds, 1),
            "raw_bytes": raw, "stored_bytes": nbytes, "compression_ratio": round(raw / max(nbytes, 1), 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=str(Path.home() / ".cache" / "convlstm-dist" / "bench" /
                                        f"synthetic-{DEFAULT_FRAMES}x{DEFAULT_SIZE}-seed0.zarr"),
                   help="local folder or s3://bucket/prefix.zarr (S3 credentials/endpoint from the AWS_* "
                        "environment, as every project command)")
    p.add_argument("--frames", type=int, default=DEFAULT_FRAMES)
    p.add_argument("--size", type=int, default=DEFAULT_SIZE, help="grid is size x size pixels of 1 km")
    p.add_argument("--chunk-time", type=int, default=DEFAULT_CHUNKS[0])
    p.add_argument("--chunk-space", type=int, default=DEFAULT_CHUNKS[1])
    p.add_argument("--shard-time", type=int, default=DEFAULT_SHARD_TIME, help="frames per shard (0: no sharding)")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="frames per append_frames call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dry-share", type=float, default=0.2)
    args = p.parse_args(argv)
    from convlstm_dist.data.storage import storage_options_for

    info = build(args.url, args.frames, args.size, storage_options_for(args.url),
                 (args.chunk_time, args.chunk_space, args.chunk_space), args.shard_time or None, args.batch,
                 args.seed, args.dry_share)
    for k, v in info.items():
        print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
