"""File mechanics of every folder the commands write: atomic writes, keyed Parquet parts, folder locks, claims.

Every command is resumable, and a resume trusts what it finds on disk (a plan, a summary, a Parquet part,
a learning view). So:

- **Atomic writes.** A process killed mid-write (Ctrl-C, out of memory, a lost node) must never leave a
  half-written file under the real name. A file is written as `<name>.<pid>-<random>.tmp` in the same folder
  (a rename does not cross file systems; the name is the writer's own, so two processes writing one file at
  once never share a temporary), flushed to disk, renamed over the target (`os.replace` is atomic on
  POSIX: a reader sees the old file or the new one), and the folder is flushed too, so the rename itself
  survives a power cut. Part readers glob `part-*.parquet`, which never matches a temporary.
- **Keyed part tables** (`PartTable`): rows written as they come, buffered, one Parquet part per flush,
  named by writer and number (two writers never overwrite each other's parts); a second row with a key
  already held is dropped, so a replayed page or a restarted worker never writes a row twice. Reading
  merges the finished file and the parts, the first row per key winning; a part that does not read (cut
  short) is moved aside as `*.corrupt` with one warning, so a resume redoes its rows. The simulation's events and the
  evaluation's decisions and ratings are such tables.
- **Folder locks** (`FolderLock`; `RunFolder`, `EvalFolder`, `CompareFolder`, `LearningFolder` each name
  theirs): flock, released by the kernel when the holder dies, so a crash never
  leaves a stale lock to remove by hand.
- **Claims** (`claim`): a folder written by one setup refuses another, so two setups' results never mix.
- **Folder layouts** (`RunFolder`, `EvalFolder`, `CompareFolder`, `LearningFolder`, in `folders.py`): the one
  place that names their files.

`files.py` holds the mechanics; import everything from `alignuser_sim.store`.
"""

from alignuser_sim.store.files import (
    CALL_FIELDS,
    FolderLock,
    PartTable,
    claim,
    merge_parts,
    part_files,
    read_json,
    read_parts,
    replacing,
    write_json,
    write_parquet,
    write_text,
)
from alignuser_sim.store.folders import (
    LLM_FAILURES,
    SCENARIO_FILE,
    VLLM_LOG,
    CompareFolder,
    EvalFolder,
    LearningFolder,
    RunFolder,
)

__all__ = [
    "CALL_FIELDS",
    "CompareFolder",
    "EvalFolder",
    "FolderLock",
    "LLM_FAILURES",
    "LearningFolder",
    "PartTable",
    "RunFolder",
    "SCENARIO_FILE",
    "VLLM_LOG",
    "claim",
    "merge_parts",
    "part_files",
    "read_json",
    "read_parts",
    "replacing",
    "write_json",
    "write_parquet",
    "write_text",
]
