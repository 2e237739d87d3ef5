"""Radar data: files -> Zarr archive -> training windows -> Ray Data (or memory) batches.

Importing this package loads none of its modules; each public name is imported on first use
(``from convlstm_dist.data import open_archive``). The contract of an archive is
``docs/archive_format.md``; the one of a reader is :mod:`.readers`.

* archives (:mod:`.archive`, :mod:`.storage`): create, append, open, summarise; local or ``s3://``.
* ingest (:mod:`.ingest`): decode files with a reader and append them. Its function is
  ``convlstm_dist.data.ingest.ingest`` (a public name cannot equal its module's name).
* readers (:mod:`.readers`; per format family :mod:`.readers_hdf5`, :mod:`.readers_pgm`,
  :mod:`.readers_pysteps`), quantities (:mod:`.quantity`) and units (:mod:`.units`).
* windows and splits (:mod:`.windows`), the plan of a run's data (:mod:`.plan`), samples
  without Ray (:mod:`.samples`), Ray Data streaming (:mod:`.datasource`).
* Moving MNIST (:mod:`.moving_mnist`, on the device :mod:`.mnist_device`) and the shipped sample
  (:mod:`.shipped`); the onboarding check of ``convlstm-dist data-check`` (:mod:`.check`).
* damaged chunks (:mod:`.verify`): ``archive-info --verify``, ``data.skip_damaged``.
"""

from convlstm_dist.lazy import lazy_exports

_PUBLIC = {
    "archive": ["DEFAULT_CHUNKS", "Archive", "GridSpec", "append_frames", "consolidate", "create_archive", "open_archive",
                "summary"],
    "check": ["BatchCheck", "check_batches", "distinct_archives"],
    "datasource": ["epoch_clock", "window_dataset"],
    "ingest": ["IngestReport", "decode_latest"],
    "mnist_device": ["POOLS", "DeviceMovingMNIST", "EvalSet", "default_images_path", "split_io"],
    "plan": ["DataPlan", "resolve_url"],
    "quantity": ["Quantity", "available_sources", "get_quantity", "quantity_of_source", "quantity_of_variable"],
    "readers": ["Reader", "get_reader", "list_readers", "register_reader"],
    "readers_pysteps": ["parse_reader_options"],
    "samples": ["read_windows", "to_compute"],
    "shipped": ["SAMPLE_READER", "sample_files"],
    "storage": ["archive_key", "archive_name", "cancel_pending_io", "endpoint_of", "exists", "filesystem",
                "storage_error",
                "is_remote", "ray_storage", "scrub", "storage_options_for"],
    "crops": ["choose_crop"],
    "units": ["to_rain_mmh"],
    "verify": ["DamagedArchiveError", "DamagedChunk", "find_damaged", "merge_ranges", "verify_archive"],
    "windows": ["SplitRule", "build_index", "gap_free_starts"],
}
__all__ = [name for names in _PUBLIC.values() for name in names]
__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
