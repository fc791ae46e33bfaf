"""The Grain pair pipeline on the bundled demo pairs: batch contract, determinism, sharding,
epochs, exact resume from the iterator state, prompt-length validation, the HPS tokenizer."""

import json

import numpy as np
import pytest
from tokenizers import pre_tokenizers
from transformers import CLIPTokenizer

from pairuni_jax.data import images, pipeline, prompts, records

P = 4
KEYS = {
    "und_input_ids": (np.int32, (P, 128)),
    "und_attention_mask": (np.bool_, (P, 128)),
    "und_pixel_values": (np.float32, (P, 64, 64, 3)),
    "und_answer": (np.int32, (P,)),
    "und_num_options": (np.int32, (P,)),
    "gen_input_ids": (np.int32, (P, 32)),
    "gen_attention_mask": (np.bool_, (P, 32)),
    "hps_input_ids": (np.int32, (P, 77)),
    "similarity": (np.float32, (P,)),
    "pair_weight_aligned": (np.bool_, (P,)),
    "record_index": (np.int32, (P,)),
}


def _clip_tokenizer() -> CLIPTokenizer:
    """A character-level CLIP tokenizer (no merges) with the real special-token layout."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(alphabet + [c + "</w>" for c in alphabet])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    return CLIPTokenizer(vocab=vocab, merges=[])


@pytest.fixture(scope="module")
def clip():
    return _clip_tokenizer()


@pytest.fixture(scope="module")
def demo(clip):
    config = pipeline.DataConfig.demo(pairs_per_host=P, num_epochs=1, read_threads=1)
    return pipeline.PairPipeline(config, pipeline.TINY_TOKENIZER, clip)


def _host(index, count=1, pairs=P):
    return pipeline.HostSlice.block(index, count, pairs)


def _record_order(pipe, host=None):
    host = host or _host(0, 1, pipe.config.pairs_per_host)
    return np.concatenate([b["record_index"] for b in pipe.iterator(host)]).tolist()


def test_batch_contract(demo, clip):
    batch = next(demo.iterator(_host(0)))
    assert set(batch) == set(KEYS)
    for key, (dtype, shape) in KEYS.items():
        assert batch[key].dtype == dtype and batch[key].shape == shape, key
    ids = demo.encoder.prompts.ids
    for row in range(P):
        record = demo.record(int(batch["record_index"][row]))
        und, mask = batch["und_input_ids"][row], batch["und_attention_mask"][row]
        n_real = int(mask.sum())
        assert mask[-n_real:].all() and not mask[:-n_real].any()  # left padding
        assert (und[:-n_real] == ids.pad).all() and und[-n_real] == ids.bos
        expected = demo.encoder.prompts.understanding_ids(record.understand.question)
        np.testing.assert_array_equal(und[-n_real:], expected)
        assert int((und == ids.image).sum()) == 16
        gen, gen_mask = batch["gen_input_ids"][row], batch["gen_attention_mask"][row]
        expected = demo.encoder.prompts.generation_ids(record.generate.prompt)
        np.testing.assert_array_equal(gen[gen_mask], expected)
        assert gen[-1] == ids.begin_of_image and not gen_mask[: -len(expected)].any()
        np.testing.assert_array_equal(
            batch["und_pixel_values"][row],
            images.load_and_preprocess(record.understand.image_path, 64),
        )
        assert batch["und_answer"][row] == "ABCD".index(record.understand.answer)
        assert batch["und_num_options"][row] == len(record.understand.options)
        assert batch["similarity"][row] == np.float32(record.similarity)
        assert batch["pair_weight_aligned"][row] == record.aligned
        np.testing.assert_array_equal(
            batch["hps_input_ids"][row], pipeline.ClipTokenize(clip)([record.generate.prompt])[0]
        )


def test_demo_report(demo):
    report = demo.report
    assert (report.records, report.valid, report.aligned, report.retrieved) == (512, 512, 256, 256)
    assert report.ok


def test_deterministic_for_a_seed(demo, clip):
    again = pipeline.PairPipeline(demo.config, pipeline.TINY_TOKENIZER, clip)
    order = _record_order(demo)
    assert order == _record_order(again)
    assert sorted(order) == sorted(int(line) - 1 for line in demo.source.index.lines)
    other_seed = pipeline.PairPipeline(
        pipeline.DataConfig.demo(num_epochs=1, read_threads=1, seed=1),
        pipeline.TINY_TOKENIZER,
        clip,
    )
    assert _record_order(other_seed) != order


def test_hosts_read_their_rows_of_one_global_order(demo, clip):
    """Batch s of two hosts x 4 pairs is batch s of one host x 8 pairs, row for row."""
    config = pipeline.DataConfig.demo(pairs_per_host=2 * P, num_epochs=1, read_threads=1)
    one_host = pipeline.PairPipeline(config, pipeline.TINY_TOKENIZER, clip)
    whole = [b["record_index"] for b in one_host.iterator(_host(0, 1, 2 * P))]
    hosts = [[b["record_index"] for b in demo.iterator(_host(h, 2))] for h in range(2)]
    assert len(whole) == len(hosts[0]) == len(hosts[1]) == 64
    for s, batch in enumerate(whole):
        np.testing.assert_array_equal(np.concatenate([hosts[0][s], hosts[1][s]]), batch)
    # Each pair is read by exactly one host in the epoch.
    assert sorted(np.concatenate(hosts[0] + hosts[1]).tolist()) == list(range(512))
    # Rows need not be a block (a mesh may interleave the hosts' devices along the batch).
    rows = (1, 2, 5, 6)
    picked = [b["record_index"] for b in demo.iterator(pipeline.HostSlice(2 * P, rows))]
    for s, batch in enumerate(whole):
        np.testing.assert_array_equal(picked[s], batch[list(rows)])


def test_host_slice_validation(demo):
    with pytest.raises(ValueError, match="ascending, distinct"):
        pipeline.HostSlice(8, (3, 1))
    with pytest.raises(ValueError, match="ascending, distinct"):
        pipeline.HostSlice(8, (6, 8))
    with pytest.raises(ValueError, match="reads 3 rows of each global batch"):
        demo.dataset(pipeline.HostSlice(8, (0, 1, 2)))


def test_epochs_reshuffle_and_unequal_sets_stay_in_step(clip):
    config = pipeline.DataConfig.demo(pairs_per_host=3, num_epochs=2, read_threads=1)
    pipe = pipeline.PairPipeline(config, pipeline.TINY_TOKENIZER, clip)
    # 1024 records over 2 hosts x 3 pairs: 170 global batches each host, 4 records dropped.
    orders = [_record_order(pipe, _host(i, 2, 3)) for i in range(2)]
    assert len(orders[0]) == len(orders[1]) == 510
    full = _record_order(pipe)
    assert len(full) == 1023
    assert full[:512] != full[512:1023] and sorted(full[:512]) == list(range(512))


def test_resume_from_iterator_state(demo, clip):
    config = pipeline.DataConfig.demo(pairs_per_host=P, num_epochs=None, read_threads=2)
    first = pipeline.PairPipeline(config, pipeline.TINY_TOKENIZER, clip).iterator(_host(1, 2))
    for _ in range(5):
        next(first)
    state = json.loads(json.dumps(first.get_state()))  # survives a JSON round trip
    expected = [next(first) for _ in range(12)]  # crosses the epoch boundary (8 batches/epoch)
    resumed = pipeline.PairPipeline(config, pipeline.TINY_TOKENIZER, clip).iterator(_host(1, 2))
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for key in KEYS:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_worker_processes_give_the_same_batches(demo, clip):
    config = pipeline.DataConfig.demo(pairs_per_host=P, num_epochs=1, read_threads=1, num_workers=1)
    pipe = pipeline.PairPipeline(config, pipeline.TINY_TOKENIZER, clip)
    iterator = pipe.iterator(_host(0))
    try:
        got = [next(iterator)["record_index"] for _ in range(3)]
    finally:
        iterator.close()
    want = [b["record_index"] for b in demo.iterator(_host(0))][:3]
    np.testing.assert_array_equal(np.stack(got), np.stack(want))


def _write_pairs(tmp_path, questions):
    src = pipeline.DEMO_PAIRS.parent
    lines = []
    for question in questions:
        rec = json.loads(pipeline.DEMO_PAIRS.read_text().splitlines()[0])
        rec["understand_ann"]["question"] = question
        rec["understand_ann"]["answer"] = "A"  # the questions here offer A and B
        lines.append(json.dumps(rec))
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, src


def test_prompt_too_long_raises_or_is_skipped(tmp_path, clip):
    good = "Which shape?\nA. circle\nB. square"
    long = "Which shape is drawn in the picture of many many shapes?" * 6 + "\nA. circle\nB. x"
    path, src = _write_pairs(tmp_path, [good, good, long, good, good])
    config = pipeline.DataConfig.demo(
        path=str(path), image_root=str(src), pairs_per_host=2, num_epochs=1, read_threads=1
    )
    with pytest.raises(
        records.DataError,
        match=f"{path}:3: understand_ann.question: the "
        "understanding prompt is .* more than the "
        "maximum 128",
    ):
        pipeline.PairPipeline(config, pipeline.TINY_TOKENIZER, clip)
    skipping = pipeline.PairPipeline(
        pipeline.DataConfig.demo(
            path=str(path),
            image_root=str(src),
            pairs_per_host=2,
            num_epochs=1,
            read_threads=1,
            on_error="skip",
        ),
        pipeline.TINY_TOKENIZER,
        clip,
    )
    assert dict(skipping.report.errors_by_kind) == {"prompt_too_long": 1}
    assert sorted(_record_order(skipping)) == [0, 1, 3, 4]


def test_too_few_records_for_a_global_batch(tmp_path, clip):
    path, src = _write_pairs(tmp_path, ["Which?\nA. a\nB. b"] * 3)
    config = pipeline.DataConfig.demo(
        path=str(path), image_root=str(src), pairs_per_host=2, num_epochs=1, read_threads=1
    )
    with pytest.raises(ValueError, match="do not fill one global batch of 4 pairs"):
        pipeline.PairPipeline(config, pipeline.TINY_TOKENIZER, clip).dataset(_host(0, 2, 2))


def test_config_validation():
    with pytest.raises(ValueError, match="data.pairs_per_host must be >= 1"):
        pipeline.DataConfig.demo(pairs_per_host=0)
    with pytest.raises(ValueError, match="data.on_error"):
        pipeline.DataConfig.demo(on_error="ignore")
    with pytest.raises(ValueError, match="cannot hold BOS and the 576 image tokens"):
        pipeline.DataConfig.demo(num_image_tokens=576)


def test_clip_tokenize_layout(clip):
    tokenize = pipeline.resolve_hps_tokenizer(clip)
    sot, eot = clip.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"])
    short, long = tokenize(["Red ball", "x" * 200])
    ids = clip("Red ball")["input_ids"]
    assert short.dtype == np.int32 and short.shape == (77,)
    assert ids[0] == sot and ids[-1] == eot
    assert short[: len(ids)].tolist() == ids and not short[len(ids) :].any()  # zero padding
    assert long[0] == sot and long[76] == eot and (long[1:76] != 0).all()  # EOT kept at 76
    custom = pipeline.resolve_hps_tokenizer(lambda texts: np.ones((len(texts), 77)))
    assert custom(["a"]).shape == (1, 77)
    with pytest.raises(TypeError, match="tokenizer directory, tokenizer or callable"):
        pipeline.resolve_hps_tokenizer(77)


def test_prompt_encoder_uses_the_configured_system_prompt(clip):
    config = pipeline.DataConfig.demo(num_epochs=1, read_threads=1, system_prompt="Be brief.")
    pipe = pipeline.PairPipeline(config, pipeline.TINY_TOKENIZER, clip)
    ids = pipe.encoder.prompts.understanding_ids("Which?\nA. a\nB. b")
    text = pipe.encoder.prompts.tokenizer.decode(ids)
    assert text.startswith(prompts.BOS + "Be brief.\n\n<|User|>: <begin_of_image>")


def test_image_broken_after_the_scan_raises_with_its_record(tmp_path, clip):
    (tmp_path / "images").mkdir()
    lines = pipeline.DEMO_PAIRS.read_text().splitlines()[:4]
    for line in lines:
        for side in json.loads(line).values():
            if isinstance(side, dict):
                name = side["image_path"]
                (tmp_path / name).write_bytes((pipeline.DEMO_PAIRS.parent / name).read_bytes())
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    config = pipeline.DataConfig.demo(path=str(path), num_epochs=1, read_threads=1)
    pipe = pipeline.PairPipeline(config, pipeline.TINY_TOKENIZER, clip)
    for line in lines:
        (tmp_path / json.loads(line)["understand_ann"]["image_path"]).write_bytes(b"broken")
    with pytest.raises(records.DataError, match=f"{path}:[1-4]: understand_ann.image_path: "):
        next(pipe.iterator(_host(0)))
