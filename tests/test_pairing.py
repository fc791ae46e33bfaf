"""``pairuni data pair`` with precomputed features: planted neighbours, greedy one-use matching,
aligned selection (k-means medoids against a scikit-learn/NumPy reference), the output format and
every bad-input error. The image towers are tested in ``test_pairing_encoders.py``."""

import json

import numpy as np
import pytest
from PIL import Image
from sklearn.cluster import MiniBatchKMeans

from pairuni_jax import cli
from pairuni_jax.pairing import matching, selection
from pairuni_jax.pairing.features import normalize_rows

QUESTION = "What is shown?\nA. a cat\nB. a dog\n\nAnswer with the option's letter from the given choices directly."
DIM = 48


def _understanding(i, caption=False, tag="und"):
    record = {"image_path": f"images/u{i:03d}.png", "question": QUESTION, "answer": "A", "tag": tag}
    if caption:
        record["prompt"] = f"a caption of understanding image {i}"
    return record


def _generation(i, qa=False, tag="gen"):
    record = {"image_path": f"images/g{i:03d}.png", "prompt": f"generation prompt {i}", "tag": tag}
    if qa:
        record.update(question=QUESTION, answer="B")
    return record


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _images(root, records):
    (root / "images").mkdir(exist_ok=True)
    rng = np.random.default_rng(len(records))
    for record in records:
        pixels = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / record["image_path"])


def _basis(n, seed=0):
    """n orthonormal rows of width DIM."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(DIM, DIM)))
    return q[:n]


def _dataset(root, und, gen, und_features, gen_features):
    _images(root, und + gen)
    paths = {
        "u": _write_jsonl(root / "und.jsonl", und),
        "g": _write_jsonl(root / "gen.jsonl", gen),
        "fu": root / "und.npy",
        "fg": root / "gen.npy",
    }
    np.save(paths["fu"], np.asarray(und_features, np.float32))
    np.save(paths["fg"], np.asarray(gen_features, np.float32))
    return paths


def _pair(paths, out, *extra):
    argv = ["data", "pair", "--understanding", str(paths["u"]), "--generation", str(paths["g"])]
    argv += ["--features-u", str(paths["fu"]), "--features-g", str(paths["fg"])]
    return cli.main([*argv, "--out", str(out), "--no-progress", *extra])


# Planted: generation record g matches understanding record u with this exact cosine.
PLANTED = {0: (3, 0.95), 1: (0, 0.90), 2: (5, 0.80), 4: (1, 0.65), 5: (6, 0.6001)}
BELOW = {3: (2, 0.59), 6: (4, 0.40)}  # nearest neighbour under the threshold


def _planted_features():
    """8 understanding rows u_j = e_j; generation rows g = c·u + sqrt(1 - c²)·w with w a unit
    vector orthogonal to every u and every other w, so that cos(g, u) = c exactly and every
    unplanted cosine is 0."""
    basis = _basis(8 + 8)
    und = basis[:8]
    gen = np.zeros((8, DIM))
    for g, (u, c) in {**PLANTED, **BELOW}.items():
        gen[g] = c * und[u] + np.sqrt(1 - c * c) * basis[8 + g]
    gen[7] = basis[15]  # no neighbour at all
    return und, gen


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    und_features, gen_features = _planted_features()
    und = [_understanding(i, tag="odd" if i % 2 else "even") for i in range(8)]
    gen = [_generation(i) for i in range(8)]
    return root, _dataset(root, und, gen, und_features, gen_features), und_features, gen_features


def test_planted_pairs_are_retrieved_with_their_exact_cosine(planted, capsys):
    root, paths, und_features, gen_features = planted
    out = root / "pairs.jsonl"
    assert _pair(paths, out, "--threshold", "0.6") == 0
    pairs = _read_jsonl(out)
    got = {}
    for pair in pairs:
        g = int(pair["generate_ann"]["image_path"][-7:-4])
        u = int(pair["understand_ann"]["image_path"][-7:-4])
        got[g] = (u, pair["similarity"])
        assert "aligned" not in pair
    assert set(got) == set(PLANTED)
    for g, (u, c) in PLANTED.items():
        assert got[g][0] == u
        exact = float(gen_features[g] @ und_features[u] / np.linalg.norm(gen_features[g]))
        assert got[g][1] == pytest.approx(exact, abs=2e-6) and exact == pytest.approx(c, abs=1e-12)
    assert min(s for _, s in got.values()) >= 0.6
    # Decreasing similarity order, every record used once.
    assert [p["similarity"] for p in pairs] == sorted(
        (p["similarity"] for p in pairs), reverse=True
    )
    assert len({u for u, _ in got.values()}) == len(got)
    out_text = capsys.readouterr().out
    assert "pairs: 5 (aligned 0, retrieved 5)" in out_text
    assert "unmatched generation records: 3 (gen=3)" in out_text
    assert "understanding tags: even=2, odd=3" in out_text
    assert "threshold: 0.6" in out_text
    assert "[0.60, 0.65)        1 " in out_text
    png = root / "pairs.similarity.png"
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] > 100


def test_output_validates_is_deterministic_and_never_overwritten(planted, capsys):
    root, paths, _, _ = planted
    a, b = root / "a" / "pairs.jsonl", root / "b" / "pairs.jsonl"
    a.parent.mkdir()
    b.parent.mkdir()
    assert _pair(paths, a) == 0 and _pair(paths, b) == 0
    assert a.read_bytes() == b.read_bytes()
    # Image paths are relative to the output's directory: the file validates where it is.
    assert _read_jsonl(a)[0]["generate_ann"]["image_path"].startswith("../images/")
    assert cli.main(["data", "validate", str(a)]) == 0
    capsys.readouterr()
    before = b.read_bytes()
    assert _pair(paths, b, "--threshold", "0.9") == 2
    assert "already exists" in capsys.readouterr().out and b.read_bytes() == before
    assert _pair(paths, b, "--threshold", "0.9", "--overwrite") == 0
    assert len(_read_jsonl(b)) == 2
    assert not list(root.glob(".*.tmp-*"))


def test_greedy_matching_gives_a_shared_best_match_to_the_more_similar_query():
    """u0 is the nearest understanding record of both g0 (0.70) and g1 (0.90): g1 takes it; with
    one candidate per query g0 stays unmatched, with two it falls back to u1 (0.65)."""
    e = np.eye(DIM)
    und = np.stack([e[0], e[1]])
    g0 = 0.70 * e[0] + 0.65 * e[1] + np.sqrt(1 - 0.70**2 - 0.65**2) * e[2]
    g1 = 0.90 * e[0] + np.sqrt(1 - 0.81) * e[3]
    gen = normalize_rows(np.stack([g0, g1]))
    und = normalize_rows(und)
    one = matching.retrieve_pairs(gen, und, top_n=1, threshold=0.6, progress=False)
    assert (one.queries.tolist(), one.keys.tolist()) == ([1], [0])
    two = matching.retrieve_pairs(gen, und, top_n=2, threshold=0.6, progress=False)
    assert (two.queries.tolist(), two.keys.tolist()) == ([1, 0], [0, 1])
    np.testing.assert_allclose(two.similarities, [0.90, 0.65], atol=1e-6)


def test_blocked_search_equals_brute_force_on_the_mesh(mesh):
    """Blocks and tiles smaller than the sets, rows over 8 devices, against float64 NumPy."""
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(20, 24))
    keys = normalize_rows(centres[rng.integers(0, 20, 300)] + 0.6 * rng.normal(size=(300, 24)))
    queries = normalize_rows(centres[rng.integers(0, 20, 203)] + 0.6 * rng.normal(size=(203, 24)))
    found = matching.nearest_neighbours(
        queries,
        keys,
        top_n=3,
        threshold=0.5,
        mesh=mesh,
        query_block=40,
        key_tile=64,
        progress=False,
    )
    sims = queries.astype(np.float64) @ keys.T.astype(np.float64)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :3]
    best = np.take_along_axis(sims, order, axis=1)
    assert (best >= 0.5).sum() > 200  # the test exercises real candidates
    np.testing.assert_array_equal(found.keys, np.where(best >= 0.5, order, -1))
    np.testing.assert_allclose(found.similarities[best >= 0.5], best[best >= 0.5], atol=1e-6)
    assert np.all(np.isneginf(found.similarities[best < 0.5]))
    matches = matching.greedy_match(found)
    assert len(set(matches.queries.tolist())) == len(set(matches.keys.tolist())) == len(matches)
    assert np.all(np.diff(matches.similarities) <= 0) and np.all(matches.similarities >= 0.5)


def _blobs(n_per, centres, seed=0, noise=0.15):
    rng = np.random.default_rng(seed)
    rows = [c + noise * rng.normal(size=(n_per, c.shape[0])) for c in centres]
    return normalize_rows(np.concatenate(rows))


def test_kmeans_medoids_equal_a_scikit_learn_numpy_reference():
    features = _blobs(30, _basis(7, seed=4), seed=5, noise=0.3)
    chosen = selection.kmeans_medoids(features, clusters=7, seed=3)
    reference = MiniBatchKMeans(n_clusters=7, random_state=3).fit(features)
    expected = []
    for k in range(7):
        members = np.flatnonzero(reference.labels_ == k)
        distances = np.linalg.norm(features[members] - reference.cluster_centers_[k], axis=1)
        expected.append(members[np.argmin(distances)])
    assert chosen.tolist() == sorted(expected)
    # Well-separated blobs: one medoid per blob.
    separated = selection.kmeans_medoids(_blobs(30, _basis(7, seed=4), seed=5, noise=0.05), 7, 3)
    assert sorted(separated // 30) == list(range(7))


def test_random_selection_is_seeded():
    features = _blobs(10, _basis(3), seed=1)
    a = selection.select_aligned(features, selection.AlignedSelection.RANDOM, 5, seed=0)
    assert a.tolist() == selection.select_aligned(features, "random", 5, seed=0).tolist()
    assert a.tolist() != selection.select_aligned(features, "random", 5, seed=1).tolist()
    assert len(set(a.tolist())) == 5
    everything = selection.select_aligned(features, selection.AlignedSelection.ALL, None, seed=0)
    assert everything.tolist() == list(range(30))
    with pytest.raises(ValueError, match="needs --clusters"):
        selection.select_aligned(features, selection.AlignedSelection.KMEANS, None, seed=0)
    with pytest.raises(ValueError, match="between 1 and the 30"):
        selection.select_aligned(features, selection.AlignedSelection.KMEANS, 31, seed=0)


def test_aligned_pairs_come_from_records_with_their_own_completion(tmp_path, capsys):
    """Understanding records with a caption and generation records with a question and answer
    form aligned pairs (both halves the record, similarity 1); with k-means, one per cluster."""
    centres = _basis(6, seed=7)
    und = [_understanding(i, caption=i < 6, tag=f"u{i % 2}") for i in range(10)]
    gen = [_generation(i, qa=i < 6) for i in range(10)]
    und_features = _blobs(1, centres, seed=1).tolist() + _blobs(1, centres, seed=2)[:4].tolist()
    gen_features = _blobs(1, centres, seed=3).tolist() + _blobs(1, centres, seed=4)[:4].tolist()
    paths = _dataset(tmp_path, und, gen, und_features, gen_features)

    assert _pair(paths, tmp_path / "all.jsonl", "--aligned-selection", "all") == 0
    pairs = _read_jsonl(tmp_path / "all.jsonl")
    aligned = [p for p in pairs if p.get("aligned")]
    assert len(aligned) == 12
    for pair in aligned:
        assert pair["similarity"] == 1.0 and pair["generate_ann"] == pair["understand_ann"]
    captions = {
        p["understand_ann"]["prompt"] for p in aligned if "u0" in p["understand_ann"]["image_path"]
    }
    assert captions == {f"a caption of understanding image {i}" for i in range(6)}
    aligned_images = {p["understand_ann"]["image_path"] for p in aligned}
    for pair in pairs:
        if not pair.get("aligned"):
            assert pair["understand_ann"]["image_path"] not in aligned_images
            assert pair["generate_ann"]["image_path"] not in aligned_images
    assert cli.main(["data", "validate", str(tmp_path / "all.jsonl")]) == 0
    capsys.readouterr()

    assert _pair(paths, tmp_path / "km.jsonl", "--clusters", "6", "--seed", "2") == 0
    km = [p for p in _read_jsonl(tmp_path / "km.jsonl") if p.get("aligned")]
    assert 1 <= len(km) <= 6
    assert "aligned: " in capsys.readouterr().out
    assert _pair(paths, tmp_path / "none.jsonl") == 2
    assert "needs --clusters K (12 records can form aligned pairs" in capsys.readouterr().out


# -- bad input ------------------------------------------------------------------------------------


@pytest.fixture
def small(tmp_path):
    und = [_understanding(i) for i in range(4)]
    gen = [_generation(i) for i in range(4)]
    und_features, gen_features = _planted_features()
    return tmp_path, und, gen, _dataset(tmp_path, und, gen, und_features[:4], gen_features[:4])


def _error(capsys):
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing_image", "und.jsonl:3: image_path: no image file at"),
        ("unreadable_image", "gen.jsonl:2: image_path: cannot read"),
        ("duplicate_within", "gen.jsonl:4: image_path: "),
        ("duplicate_across", "gen.jsonl:1: image_path: "),
        ("missing_field", "und.jsonl:2: answer: required field is missing"),
        ("nan_feature", "gen.jsonl:3: features: row 2 of"),
        ("rows", "und.npy: 3 rows, but"),
        ("width", "feature widths differ"),
        ("empty", "no valid generation records"),
    ],
)
def test_bad_input_is_a_named_error_before_any_work(small, capsys, case, expected):
    root, und, gen, paths = small
    if case == "missing_image":
        (root / und[2]["image_path"]).unlink()
    elif case == "unreadable_image":
        (root / gen[1]["image_path"]).write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    elif case == "duplicate_within":
        gen[3]["image_path"] = gen[0]["image_path"]
        _write_jsonl(paths["g"], gen)
    elif case == "duplicate_across":
        gen[0]["image_path"] = und[1]["image_path"]
        _write_jsonl(paths["g"], gen)
    elif case == "missing_field":
        del und[1]["answer"]
        _write_jsonl(paths["u"], und)
    elif case == "nan_feature":
        features = np.load(paths["fg"])
        features[2, 5] = np.nan
        np.save(paths["fg"], features)
    elif case == "rows":
        np.save(paths["fu"], np.load(paths["fu"])[:3])
    elif case == "width":
        np.save(paths["fg"], np.load(paths["fg"])[:, :10])
    elif case == "empty":
        paths["g"].write_text("\n")
    assert _pair(paths, root / "pairs.jsonl") == 2
    assert expected in _error(capsys)
    assert not (root / "pairs.jsonl").exists() and not (root / "pairs.similarity.png").exists()


def test_skip_mode_counts_bad_records_and_pairs_the_rest(small, capsys):
    root, und, gen, paths = small
    (root / und[2]["image_path"]).unlink()
    gen[3]["image_path"] = gen[0]["image_path"]
    _write_jsonl(paths["g"], gen)
    features = np.load(paths["fg"])
    features[1] = 0.0
    np.save(paths["fg"], features)
    assert _pair(paths, root / "pairs.jsonl", "--on-error", "skip") == 0
    out = capsys.readouterr().out
    assert "understanding 4 (skipped 1), generation 4 (skipped 2)" in out
    assert "errors by kind: duplicate_image=1, invalid_feature=1, missing_image=1" in out
    pairs = _read_jsonl(root / "pairs.jsonl")
    assert [
        (p["generate_ann"]["image_path"], p["understand_ann"]["image_path"]) for p in pairs
    ] == [
        ("images/g000.png", "images/u003.png")  # the one planted pair among the records left
    ]
    assert cli.main(["data", "validate", str(root / "pairs.jsonl")]) == 0


def test_inconsistent_options_are_named(small, capsys):
    root, _, _, paths = small
    base = ["data", "pair", "--understanding", str(paths["u"]), "--generation", str(paths["g"])]
    out = ["--out", str(root / "p.jsonl")]
    assert cli.main([*base, *out, "--features-u", str(paths["fu"])]) == 2
    assert "both --features-u and --features-g" in _error(capsys)
    assert cli.main([*base, *out]) == 2
    assert "give --model DIR" in _error(capsys)
    assert cli.main([*base, *out, "--encoder", "clip", "--model", str(root)]) == 2
    assert "give --reward DIR" in _error(capsys)
    assert _pair(paths, root / "p.jsonl", "--threshold", "1.5") == 2
    assert "--threshold must be in [0, 1]" in _error(capsys)
    assert _pair(paths, root / "p.jsonl", "--mesh", "data=2,model=4") == 2
    assert "--mesh" in _error(capsys)
    before = paths["u"].read_bytes()
    assert _pair(paths, paths["u"], "--overwrite") == 2
    assert "is one of the inputs" in _error(capsys) and paths["u"].read_bytes() == before
