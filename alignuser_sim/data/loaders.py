"""Which loader reads which dataset, and the Parquet cache in front of them.

A loader is a module with `load(cfg: DatasetConfig) -> Dataset` that raises `DataError` for an unusable
file and counts merely dirty rows in `Dataset.skipped`. The cache key is the loader's name plus a
fingerprint of its source files (path, size, mtime), so an edited source file is re-read.

The cache's files are written atomically with names unique to the writer (`alignuser_sim.store`), `meta.json`
last, so two first loads at once both succeed. A cached file that does not read all the same (a crash before
the writes were atomic, a damaged disk) is rebuilt from the sources with one warning, not a traceback.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
from pathlib import Path

import pyarrow as pa

from alignuser_sim.config import DatasetConfig
from alignuser_sim.data.tables import Dataset, check_dataset
from alignuser_sim.paths import cache_dir

log = logging.getLogger(__name__)

LOADER_VERSION = 1
LOADERS = {
    "ml-100k": "alignuser_sim.data.ml100k",
    "ml-1m-agent4rec": "alignuser_sim.data.ml1m_agent4rec",
    "amazon-books": "alignuser_sim.data.amazon_books",
    "steam": "alignuser_sim.data.steam",
    "generic": "alignuser_sim.data.generic",
}


def _loader(name: str):
    return importlib.import_module(LOADERS[name])


def _fingerprint(cfg: DatasetConfig, sources: list[Path], module) -> str:
    # the loader's own code is part of the key: a fixed loader must not be served a stale cache
    here = Path(__file__).parent  # the loader, this module and the shared reading/table code decide the tables
    code = hashlib.sha1(b"".join(p.read_bytes() for p in (Path(module.__file__), Path(__file__), here / "files.py",
                                                         here / "tables.py"))).hexdigest()
    stats = [code]
    for src in sources:
        files = sorted(p for p in src.rglob("*") if p.is_file()) if src.is_dir() else [src]
        for f in files:
            st = f.stat()
            stats.append((str(f.resolve()), st.st_size, st.st_mtime_ns))
    # the domain changes the prompts' words, not the tables
    blob = json.dumps([LOADER_VERSION, cfg.model_dump(mode="json", exclude={"domain"}), stats], sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def load_dataset(cfg: DatasetConfig, refresh: bool = False) -> Dataset:
    """The dataset's three tables, from the Parquet cache when its sources have not changed."""
    module = _loader(cfg.name)
    sources = module.sources(cfg)
    folder = cache_dir("datasets") / f"{cfg.name}-{_fingerprint(cfg, sources, module)}"
    if not refresh and (folder / "meta.json").exists():
        try:
            return Dataset.load(folder)
        except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as exc:
            log.warning("%s: damaged dataset cache (%s); rebuilding it from the sources", folder,
                        " ".join(str(exc).split())[:160] or type(exc).__name__)
    ds = module.load(cfg)
    check_dataset(ds, module.interactions_file(cfg))
    ds.save(folder)
    return ds
