"""SUBR: item text, encoders + cache, the retrieval core against a brute-force loop, PCA, and the
Ray Data pipeline against the pure function (methods.md §4 "ReLLaX / SUBR" items 1-2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from distrec.data import storage
from distrec.data.schema import CTR_SAMPLES, ITEMS, USERS
from distrec.errors import DataError
from distrec.retrieval.item_text import item_text, item_texts
from distrec.config.subr import SubrConfig
from distrec.retrieval.subr import build_space, retrieve_arrays, retrieve_table

# ----------------------------------------------------------------------------- helpers


def random_catalogue(rng, n_items=120, dim=24, id_gap=7):
    ids = rng.permutation(n_items).astype(np.int64) * id_gap + 3  # unsorted, non-contiguous ids
    return ids, rng.standard_normal((n_items, dim)).astype(np.float32)


def random_samples(rng, ids, n=250, max_len=70) -> pa.Table:
    rows = []
    for s in range(n):
        length = int(rng.integers(0, max_len))
        hist = rng.choice(ids, length)  # with replacement: repeated items test the tie rule
        rows.append({
            "sample_id": s, "user_id": int(rng.integers(0, 30)), "item_id": int(rng.choice(ids)),
            "rating": 4.0, "timestamp": 1000 + s, "label": int(rng.integers(0, 2)),
            "history_item_ids": [int(x) for x in hist],
            "history_ratings": [float(r) for r in rng.integers(1, 6, length)],
        })
    return pa.Table.from_pylist(rows, schema=CTR_SAMPLES)


def brute_force(space, hist, target, cfg):
    """Reference: float64 dot per pair, Python sort by (-score, -position)."""
    cand = len(hist) if cfg.candidates is None else min(len(hist), cfg.candidates)
    shift = len(hist) - cand
    if cfg.order == "recent":
        return list(range(len(hist) - min(cand, cfg.k), len(hist)))
    vt = space.vectors[space.rows(np.array([target]))[0]].astype(np.float64)
    scores = [float(space.vectors[space.rows(np.array([h]))[0]].astype(np.float64) @ vt) for h in hist[shift:]]
    best = [p + shift for p in sorted(range(cand), key=lambda p: (-scores[p], -p))[: cfg.k]]
    return sorted(best) if cfg.order == "chronological" else best


def retrieved(table, space, cfg):
    return retrieve_table(table, space, cfg).column("history_indices").to_pylist()


# ----------------------------------------------------------------------------- item text


def test_item_text_movies_books_and_items():
    items = pa.Table.from_pylist([
        {"item_id": 2, "title": "Toy Story", "categories": ["Animation", "Comedy"], "year": 1995,
         "author": None, "publisher": None, "source_id": "1"},
        {"item_id": 1, "title": "Heat (1995)", "categories": ["Crime"], "year": 1995,
         "author": None, "publisher": None, "source_id": "6"},
    ], schema=ITEMS)
    ids, texts = item_texts(items, "ml-1m")
    assert ids.tolist() == [1, 2]
    assert texts == ["Movie: Heat (1995). Genre: Crime.", "Movie: Toy Story (1995). Genres: Animation, Comedy."]
    _, first = item_texts(items, "ml-1m", genres="first")
    assert first[1] == "Movie: Toy Story (1995). Genre: Animation."
    book = {"item_id": 5, "title": " The  Hobbit ", "categories": [], "year": 1937, "author": "J. R. R. Tolkien",
            "publisher": "Allen & Unwin", "source_id": "0261102214"}
    assert item_text(book, "book") == "Book: The Hobbit. Author: J. R. R. Tolkien. Published in 1937 by Allen & Unwin."
    assert item_text({**book, "year": None, "author": None}, "book") == "Book: The Hobbit. Published by Allen & Unwin."
    assert item_text({"item_id": 9, "title": "Mug", "categories": ["Home", "Kitchen"]}) == "Item: Mug. Categories: Home, Kitchen."
    with pytest.raises(DataError, match="item_id 9"):
        item_text({"item_id": 9, "title": "  "})


# ----------------------------------------------------------------------------- retrieval core


def test_retrieved_subset_count_and_chronological_order():
    rng = np.random.default_rng(0)
    ids, vecs = random_catalogue(rng)
    table = random_samples(rng, ids)
    for k in (1, 5, 30):
        cfg = SubrConfig(k=k, pca_dim=None)
        out = retrieved(table, build_space(ids, vecs, cfg), cfg)
        for hist, idx in zip(table.column("history_item_ids").to_pylist(), out):
            assert len(idx) == min(k, len(hist))
            assert all(0 <= p < len(hist) for p in idx)  # positions into the earlier behaviours only
            assert idx == sorted(set(idx))  # chronological, no position twice


def test_k_at_least_history_equals_recent_k():
    rng = np.random.default_rng(1)
    ids, vecs = random_catalogue(rng)
    table = random_samples(rng, ids, max_len=20)
    cfg = SubrConfig(k=20, pca_dim=None)
    subr = retrieved(table, build_space(ids, vecs, cfg), cfg)
    recent = retrieved(table, None, SubrConfig(k=20, order="recent"))
    assert subr == recent == [list(range(len(h))) for h in table.column("history_item_ids").to_pylist()]
    # recent-K with a short K: the last K positions, oldest first
    short = retrieved(table, None, SubrConfig(k=3, order="recent"))
    assert short == [list(range(max(0, len(h) - 3), len(h))) for h in table.column("history_item_ids").to_pylist()]


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("pca_dim", [None, 8])
@pytest.mark.parametrize("method", ["matrix", "gather", "faiss"])
def test_equals_brute_force(similarity, pca_dim, method):
    rng = np.random.default_rng(2)
    ids, vecs = random_catalogue(rng)
    table = random_samples(rng, ids)
    hists, targets = table.column("history_item_ids").to_pylist(), table.column("item_id").to_pylist()
    for order in ("chronological", "similarity"):
        for candidates in (None, 25):
            cfg = SubrConfig(k=10, order=order, similarity=similarity, pca_dim=pca_dim, method=method, candidates=candidates)
            space = build_space(ids, vecs, cfg)
            expected = [brute_force(space, h, t, cfg) for h, t in zip(hists, targets)]
            assert retrieved(table, space, cfg) == expected, (order, candidates)


def test_all_paths_agree_and_auto_picks_matrix_or_gather():
    rng = np.random.default_rng(3)
    ids, vecs = random_catalogue(rng, n_items=300, dim=32)
    table = random_samples(rng, ids, n=400, max_len=200)
    outs = {}
    for method in ("auto", "matrix", "gather", "faiss"):
        cfg = SubrConfig(k=15, pca_dim=16, method=method)
        outs[method] = retrieved(table, build_space(ids, vecs, cfg), cfg)
    assert outs["auto"] == outs["matrix"] == outs["gather"] == outs["faiss"]
    from distrec.retrieval.subr import resolve_method

    space = build_space(ids, vecs, SubrConfig(pca_dim=None))
    assert resolve_method(space, SubrConfig()) == "matrix"
    assert resolve_method(space, SubrConfig(max_matrix_items=100)) == "gather"


def test_ties_go_to_the_more_recent_behaviour():
    # Integer vectors: every path computes these dot products exactly, so ties are real ties.
    ids = np.array([10, 11, 12, 13, 14], dtype=np.int64)
    vecs = np.array([[1, 0], [1, 0], [2, 0], [0, 1], [1, 0]], dtype=np.float32)
    target = 14
    hist = [12, 10, 13, 11, 10, 13]  # scores 2, 1, 0, 1, 1, 0
    table = pa.table({"item_id": [target], "history_item_ids": [hist]})
    for method in ("matrix", "gather", "faiss"):
        sim = SubrConfig(k=3, order="similarity", similarity="dot", pca_dim=None, method=method)
        space = build_space(ids, vecs, sim)
        assert retrieved(table, space, sim) == [[0, 4, 3]]  # score 2, then the two most recent 1s
        chrono = SubrConfig(k=3, similarity="dot", pca_dim=None, method=method)
        assert retrieved(table, space, chrono) == [[0, 3, 4]]
        # cosine: items 10, 11, 12, 14 all point the same way -> a four-way tie, recency decides
        cos = SubrConfig(k=2, order="similarity", similarity="cosine", pca_dim=None, method=method)
        assert retrieved(table, build_space(ids, vecs, cos), cos) == [[4, 3]]


def test_pca_equals_sklearn_and_is_capped():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(4)
    ids, vecs = random_catalogue(rng, n_items=60, dim=20)
    order = np.argsort(ids)
    cfg = SubrConfig(pca_dim=6, similarity="dot", seed=3)
    space = build_space(ids, vecs, cfg)
    ref = PCA(n_components=6, random_state=3).fit_transform(vecs[order])
    np.testing.assert_allclose(space.vectors, ref, rtol=1e-5, atol=1e-5)
    assert space.info["pca"]["n_components"] == 6
    cos = build_space(ids, vecs, SubrConfig(pca_dim=6, similarity="cosine", seed=3))
    np.testing.assert_allclose(cos.vectors, ref / np.linalg.norm(ref, axis=1, keepdims=True), rtol=1e-5, atol=1e-5)
    # default 512 is capped at min(n_items, dim)
    assert build_space(ids[:10], vecs[:10], SubrConfig()).vectors.shape == (10, 10)
    assert build_space(ids, vecs, SubrConfig()).vectors.shape == (60, 20)


def test_unknown_ids_and_bad_vectors_are_rejected():
    ids = np.array([1, 2, 3])
    vecs = np.eye(3, dtype=np.float32)
    cfg = SubrConfig(k=1, pca_dim=None)
    space = build_space(ids, vecs, cfg)
    with pytest.raises(DataError, match="history item id 99"):
        retrieve_table(pa.table({"item_id": [1], "history_item_ids": [[2, 99]]}), space, cfg)
    with pytest.raises(DataError, match="target item id 7"):
        retrieve_table(pa.table({"item_id": [7], "history_item_ids": [[2, 3]]}), space, cfg)
    with pytest.raises(DataError, match="NaN"):
        build_space(ids, np.full((3, 3), np.nan, dtype=np.float32), cfg)
    with pytest.raises(DataError, match="two vectors"):
        build_space(np.array([1, 1, 2]), vecs, cfg)
    with pytest.raises(ValueError, match="order"):
        SubrConfig(order="high")


def test_retrieve_arrays_on_flat_input_and_raw_vectors():
    rng = np.random.default_rng(5)
    ids, vecs = random_catalogue(rng, n_items=50, dim=8)
    table = random_samples(rng, ids, n=40)
    cfg = SubrConfig(k=4, pca_dim=4)
    a = retrieve_table(table, (ids, vecs), cfg)  # raw vectors: PCA fitted inside
    b = retrieve_table(table, build_space(ids, vecs, cfg), cfg)
    assert a.column("history_indices").equals(b.column("history_indices"))
    assert a.schema.field("history_indices").type == pa.list_(pa.int32())
    assert a.column_names == table.column_names + ["history_indices"]
    values, offsets = retrieve_arrays(np.array([0]), np.array([], dtype=np.int64), np.array([], dtype=np.int64), None, cfg)
    assert values.size == 0 and offsets.tolist() == [0]


# ----------------------------------------------------------------------------- encoders


@pytest.fixture
def tmp_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTREC_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def minilm():
    from distrec.retrieval.encoders import SentenceEncoder

    return SentenceEncoder(batch_size=16)


def test_minilm_encoder_is_384d_and_cache_hits_are_identical(tmp_home, minilm):
    from distrec.retrieval.encoders import cache_path, cached_encode

    enc = minilm
    texts = ["Movie: Toy Story (1995). Genres: Animation, Comedy.", "Movie: Heat (1995). Genre: Crime.",
             "Book: The Hobbit. Author: J. R. R. Tolkien."]
    calls = []

    def counting(batch):
        calls.append(len(batch))
        return enc.encode(batch)

    first = cached_encode(counting, texts, model_id=enc.cache_id)
    assert first.shape == (3, 384) and first.dtype == np.float32
    norms = np.linalg.norm(first, axis=1)
    assert np.all(norms > 0) and np.allclose(first / norms[:, None] @ (first / norms[:, None]).T, (first @ first.T) / np.outer(norms, norms))
    assert cache_path(enc.cache_id, texts).is_file()
    assert str(cache_path(enc.cache_id, texts)).startswith(str(tmp_home / "cache" / "embeddings"))
    again = cached_encode(counting, texts, model_id=enc.cache_id)
    assert calls == [3] and np.array_equal(first, again)
    # a different text list or model id is a different entry
    assert cache_path(enc.cache_id, texts[:2]) != cache_path(enc.cache_id, texts)
    assert cache_path("other", texts) != cache_path(enc.cache_id, texts)
    sims = first @ first.T / np.outer(norms, norms)
    assert sims[0, 1] < 0.9  # real, distinct sentence vectors


def _tiny_llm():
    from tiny_models import tiny_llama
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<unk>", "movie", "book", "toy", "story", "heat", "crime", "comedy", "the", "hobbit", ":", "."]
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", unk_token="<unk>")
    return tiny_llama(vocab_size=len(words)), tok, raw


def test_llm_mean_pool_encoder_matches_manual_mean_and_ignores_batch_mates(tmp_home, one_thread):
    import torch

    from distrec.retrieval.encoders import LLMMeanPoolEncoder, cached_encode

    model, tok, raw = _tiny_llm()
    texts = ["movie : toy story .", "heat", "book : the hobbit . crime comedy movie"]
    enc = LLMMeanPoolEncoder(model, tok, batch_size=3)
    out = enc.encode(texts)
    assert out.shape == (3, 32)
    for i, text in enumerate(texts):
        ids = torch.tensor([tok(text)["input_ids"]])
        with torch.no_grad():
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
        np.testing.assert_allclose(out[i], hidden.mean(0).numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(LLMMeanPoolEncoder(model, tok).encode([text])[0], out[i], rtol=1e-4, atol=1e-5)
    # a raw tokenizers.Tokenizer works too
    np.testing.assert_allclose(LLMMeanPoolEncoder(model, raw).encode(texts), out, rtol=1e-4, atol=1e-5)
    a = cached_encode(enc, texts)
    assert np.array_equal(a, cached_encode(enc, texts))
    assert enc.cache_id != LLMMeanPoolEncoder(model, tok, template="USER: {text}").cache_id


def test_encode_items_in_process_and_cache(tmp_home, minilm):
    from distrec.retrieval.encoders import encode_items

    items = _items_table(np.array([30, 12, 7, 21]))
    ids, vecs, info = encode_items(items, "ml-1m", spec="minilm", use_ray=False)
    _, texts = item_texts(items, "ml-1m")
    assert ids.tolist() == [7, 12, 21, 30] and info["dim"] == 384 and not info["cache_hit"]
    np.testing.assert_allclose(vecs, minilm.encode(texts), rtol=1e-4, atol=1e-5)
    _, again, info2 = encode_items(items, "ml-1m", spec="minilm", use_ray=False)
    assert info2["cache_hit"] and np.array_equal(vecs, again)


# ----------------------------------------------------------------------------- Ray Data pipeline


GENRES = ["Drama", "Comedy", "Horror", "Animation", "Documentary"]


def _items_table(ids) -> pa.Table:
    return pa.Table.from_pylist([
        {"item_id": int(i), "title": f"Film number {i}", "categories": [GENRES[int(i) % 5]], "year": 1950 + int(i) % 60,
         "author": None, "publisher": None, "source_id": str(i)} for i in ids
    ], schema=ITEMS)


def _write_prepared(root, rng, ids, n_train=300, n_valid=80, n_test=0):
    items = _items_table(ids)
    users = pa.Table.from_pylist([{"user_id": u, "source_id": str(u)} for u in range(30)], schema=USERS)
    samples = random_samples(rng, ids, n=n_train + n_valid + n_test, max_len=90)
    splits = {"train": samples.slice(0, n_train), "valid": samples.slice(n_train, n_valid),
              "test": samples.slice(n_train + n_valid, n_test)}
    storage.write_prepared(root, splits, items=items, users=users,
                           meta={"dataset": "ml-1m", "task": "ctr", "config": {"num_shards": 3}}, num_shards=3)
    return samples


@pytest.mark.ray
def test_ray_pipeline_with_two_actors_equals_retrieve_table(ray_local, tmp_path, tmp_home, minilm):
    """The real path: item texts -> MiniLM in a Ray Data actor pool (1 actor) -> PCA -> SUBR in
    a pool of 2 actors -> a new prepared folder, equal row for row to the pure function."""
    from distrec.retrieval.encoders import encode_items
    from distrec.retrieval.pipeline import build_retrieval

    rng = np.random.default_rng(6)
    ids, _ = random_catalogue(rng, n_items=60, dim=4)
    src = tmp_path / "prepared"
    _write_prepared(src, rng, ids)
    cfg = SubrConfig(k=7, pca_dim=8, batch_size=64)
    out = build_retrieval(src, tmp_path / "subr", cfg, n_actors=2, encode_actors=1)
    manifest = storage.verify(out)
    subr = manifest["subr"]
    assert subr["config"]["k"] == 7 and subr["n_actors"] == 2 and subr["method"] == "matrix"
    assert subr["encoder"]["spec"] == "minilm" and subr["encoder"]["dim"] == 384 and not subr["encoder"]["cache_hit"]
    assert subr["item_space"]["dim"] == 8 and subr["item_space"]["pca"]["n_components"] == 8
    assert manifest["dataset"] == "ml-1m" and set(manifest["splits"]) == {"train", "valid", "test"}
    # the vectors the actors computed are in the cache; they match MiniLM run in-process
    items = storage.open_table(src, "items")
    vec_ids, vecs, info = encode_items(items, "ml-1m", spec="minilm", use_ray=False)
    assert info["cache_hit"]
    np.testing.assert_allclose(vecs, minilm.encode(item_texts(items, "ml-1m")[1]), rtol=1e-4, atol=1e-5)
    for split in ("train", "valid", "test"):
        got = storage.open_split(out, split)
        expected = retrieve_table(storage.open_split(src, split), (vec_ids, vecs), cfg)
        assert got.schema.field("history_indices").type == pa.list_(pa.int32())
        assert got.equals(expected), split
        files = manifest["splits"][split]["files"]  # every source shard cut into >= 1 task, one output shard each
        assert sum(f["rows"] for f in files) == got.num_rows
        assert len(files) >= 3 if got.num_rows else len(files) == 1
    assert storage.open_table(out, "items").equals(items)
    with pytest.raises(DataError, match="already exists"):
        build_retrieval(src, out, cfg, n_actors=1)
    json.dumps(manifest)


def test_shard_tasks_cover_every_source_row_once_in_order():
    from distrec.retrieval.pipeline import shard_tasks

    manifest = {"splits": {
        "train": {"files": [{"path": "train/part-00000.parquet", "rows": 1000}, {"path": "train/part-00001.parquet", "rows": 7}]},
        "test": {"files": [{"path": "test/part-00000.parquet", "rows": 0}]},
    }}
    for split in manifest["splits"].values():
        split["rows"] = sum(f["rows"] for f in split["files"])
    tasks = shard_tasks(Path("/src"), manifest, n_actors=2, min_rows=100)
    # 1,007 rows / (4 tasks per actor x 2 actors) -> chunks of >= 126 rows: 1000 -> 8 ranges, 7 -> 1
    train = [t for t in tasks if t["split"] == "train"]
    assert [t["rel"] for t in train] == [f"train/part-{i:05d}.parquet" for i in range(9)]
    assert [(t["lo"], t["hi"]) for t in train if t["src"].endswith("00000.parquet")] == [(i * 125, (i + 1) * 125) for i in range(8)]
    assert [(t["src"], t["lo"], t["hi"]) for t in train[8:]] == [("/src/train/part-00001.parquet", 0, 7)]
    assert [(t["rel"], t["lo"], t["hi"]) for t in tasks if t["split"] == "test"] == [("test/part-00000.parquet", 0, 0)]


def test_shard_tasks_cap_the_rows_of_a_task(monkeypatch):
    """One actor over a big split: tasks stop at MAX_TASK_ROWS rows, so its memory stays bounded."""
    from distrec.retrieval import pipeline

    monkeypatch.setattr(pipeline, "MAX_TASK_ROWS", 300)
    manifest = {"splits": {"train": {"rows": 2000, "files": [{"path": "train/part-00000.parquet", "rows": 2000}]}}}
    tasks = pipeline.shard_tasks(Path("/src"), manifest, n_actors=1, min_rows=100)
    # 2,000 rows / 4 = 500 a task uncapped; capped at 300 -> ceil(2000 / 300) = 7 ranges of 285-286
    assert len(tasks) == 7 and max(t["hi"] - t["lo"] for t in tasks) <= 300
    assert [t["lo"] for t in tasks[1:]] == [t["hi"] for t in tasks[:-1]] and tasks[-1]["hi"] == 2000
