"""The metadata of the reader contract (:mod:`.readers`): the keys every reader returns, and the
dict of them that the decoders of :mod:`.readers_hdf5`, :mod:`.readers_pgm` and :mod:`.readers_pysteps` build."""

from __future__ import annotations

METADATA_KEYS = ("time", "variable", "units", "zr_a", "zr_b", "projection", "pixel_size_m",
                 "timestep_s", "source", "shape", "y", "x")


def metadata(**kw) -> dict:
    """A reader's metadata: exactly :data:`METADATA_KEYS`, None where ``kw`` does not give one."""
    return {k: kw.get(k) for k in METADATA_KEYS}
