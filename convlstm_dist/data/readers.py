"""Radar file readers behind one registry and one contract.

`get_reader(name).read(path) -> (data, meta)`:

* `data`: float32 (H, W) in the physical unit named by `meta["variable"]`
  (`rain_mmh` mm/h, `refl_dbz` dBZ), NaN = no data (outside radar range / missing).
  Row 0 is the north edge.
* `meta` has exactly `METADATA_KEYS`: `time` (numpy datetime64[s], valid time in UTC: the end of
  an accumulation, or the observation time), `variable`, `units`, `zr_a`, `zr_b` (Z = a R^b or
  None), `projection` (proj4, metres), `pixel_size_m`, `timestep_s`, `source`, `shape`, and
  `y`, `x` (pixel-centre projection coordinates in metres, or None when the file does not give
  them without a projection library). `timestep_s` is None when the file does not state one
  (ODIM): ingest then takes the step from the spacing of the frames.

A file that cannot be decoded (truncated, corrupt, wrong product) raises `ReadError` naming it.

Besides the native readers (`knmi_hdf5`, `fmi_pgm`, `odim_hdf5`; decoded in :mod:`.readers_hdf5` and
:mod:`.readers_pgm`, registered here), `get_reader("pysteps:<importer>", options)` wraps any pysteps
importer (`PystepsReader`, at the end of this module; the rest in :mod:`.readers_pysteps`): pysteps
units, accumulation time and transform are mapped to `rain_mmh`/`refl_dbz`, the time comes from the
file name (`fn_pattern`). pysteps is imported lazily and quietly (its import prints to stdout).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from convlstm_dist.data.reader_contract import METADATA_KEYS
from convlstm_dist.data.readers_hdf5 import read_knmi_hdf5, read_odim_hdf5
from convlstm_dist.data.readers_pgm import read_fmi_pgm
from convlstm_dist.data.readers_pysteps import (
    PYSTEPS_PREFIX, PYSTEPS_READER_KEYS, _pysteps, pysteps_defaults, pysteps_to_contract, time_from_filename,
)
from convlstm_dist.errors import UserError


class ReadError(UserError):
    """A radar file could not be decoded; the message names the file."""


class Reader:
    """A named reader: `read(path) -> (float32 array, metadata dict)`; errors name the file."""

    def __init__(self, name: str, fn: Callable, description: str):
        self.name, self._fn, self.description = name, fn, description

    def read(self, path) -> tuple[np.ndarray, dict]:
        path = Path(path)
        try:
            data, meta = self._fn(path)
        except ReadError:
            raise
        except Exception as exc:  # noqa: BLE001 - any decoding failure names the file
            raise ReadError(f"cannot read {path} with reader {self.name!r}: "
                            f"{type(exc).__name__}: {exc}") from exc
        assert set(meta) == set(METADATA_KEYS), sorted(set(meta) ^ set(METADATA_KEYS))
        return data, meta

    def __reduce__(self):  # ship by name to Ray tasks
        return (get_reader, (self.name,))

    def __repr__(self):
        return f"Reader({self.name!r})"


_READERS: dict[str, Reader] = {}


def register_reader(name: str, description: str):
    def deco(fn):
        _READERS[name] = Reader(name, fn, description)
        return fn
    return deco


def list_readers() -> list[str]:
    """The native readers, plus `pysteps:<importer>` (any importer of `pysteps.io`)."""
    return sorted(_READERS) + [PYSTEPS_PREFIX + "<importer>"]


def get_reader(name: str | Reader, options: dict | None = None) -> Reader:
    """The reader registered under `name`, or `pysteps:<importer>` (with `options`: importer keyword
    arguments plus `fn_pattern`, `timestep_s`, `source`, `zr_a`, `zr_b`); an unknown name raises
    listing the valid ones. Native readers take no options."""
    if isinstance(name, Reader):
        if options:
            raise UserError(f"reader {name.name!r} is already built; pass options when creating it")
        return name
    if str(name).startswith(PYSTEPS_PREFIX):
        return PystepsReader(str(name)[len(PYSTEPS_PREFIX):], options)
    if options:
        raise UserError(f"reader {name!r} takes no options (got {', '.join(sorted(options))}); "
                        "only pysteps:<importer> readers do")
    try:
        return _READERS[name]
    except KeyError:
        raise UserError(f"unknown reader {name!r}; valid readers: {', '.join(list_readers())}") from None


# the native readers (decoders in .readers_hdf5 and .readers_pgm)
register_reader("knmi_hdf5", "KNMI HDF5 5-min accumulation (mm) -> rain_mmh")(read_knmi_hdf5)
register_reader("fmi_pgm", "FMI gzip PGM reflectivity composite (dBZ) -> refl_dbz")(read_fmi_pgm)
register_reader("odim_hdf5", "OPERA ODIM_H5 Cartesian image, DBZH -> refl_dbz or RATE -> rain_mmh")(read_odim_hdf5)


class PystepsReader(Reader):
    """`pysteps:<importer>` with options: any pysteps importer behind the reader contract."""

    def __init__(self, importer: str, options: dict | None = None):
        self.importer = importer
        self.options = dict(options or {})
        _, pio = _pysteps()
        try:
            self._method = pio.get_method(importer, "importer")
        except ValueError:
            names = sorted(getattr(pio.interface, "_importer_methods", {}))
            raise UserError(f"unknown pysteps importer {importer!r}; pysteps has: {', '.join(names)}") from None
        defaults = pysteps_defaults(importer)
        self.fn_pattern = self.options.get("fn_pattern") or defaults.get("fn_pattern")
        self.kwargs = {**defaults.get("importer_kwargs", {}),
                       **{k: v for k, v in self.options.items() if k not in PYSTEPS_READER_KEYS}}
        step = self.options.get("timestep_s")
        if step is None and defaults.get("timestep"):
            step = float(defaults["timestep"]) * 60.0
        self.timestep_s = int(round(float(step))) if step is not None else None
        shown = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        super().__init__(PYSTEPS_PREFIX + importer + (f"[{shown}]" if shown else ""), self._read,
                         f"pysteps importer {importer!r} (pysteps.io.get_method)")

    def __reduce__(self):  # ship importer name + options to Ray tasks
        return (PystepsReader, (self.importer, self.options))

    def _read(self, path: Path):
        if not self.fn_pattern:
            raise UserError(f"reader {self.name!r}: pysteps has no file name pattern for {self.importer!r}; "
                            "give the time pattern with --reader-option fn_pattern=... (strftime, e.g. "
                            "'XYZ_%Y%m%d%H%M')")
        t = time_from_filename(path.name, self.fn_pattern)
        kwargs = dict(self.kwargs)
        if self.importer == "fmi_pgm" and "gzipped" not in kwargs:
            kwargs["gzipped"] = path.suffix == ".gz"
        out = self._method(str(path), **kwargs)
        field, meta = out[0], out[-1]
        return pysteps_to_contract(field, meta, t, self.timestep_s, self.options)
