"""Attribution streams: images decoded a few batches ahead, relevance written chunk by chunk to disk."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from audit_cases import make_tiny_case

import spray.data
from spray.attribute import attribute_shard, prepare_attributor
from spray.cache import cached_stream
from spray.config import ImageConfig, LrpAttribution, ModelConfig, PreprocessingConfig
from spray.data import Sample, iter_pixel_batches, load_dataset, load_pixels, to_model_input
from spray.model import model_token
from spray.preprocess import preprocess, preprocess_shards

GREY16 = ImageConfig(mode="L", size=(16, 16))


@pytest.fixture
def samples(tmp_path: Path) -> list[Sample]:
    case = make_tiny_case(tmp_path / "case", per_class=10)
    (case / "images" / "c1" / "003.png").write_bytes(b"not an image")
    from spray.config import DataConfig

    return load_dataset(DataConfig(manifest=case / "images" / "manifest.csv", image=GREY16)).samples


@pytest.mark.parametrize("workers", [0, 3])
def test_batches_hold_the_same_pixels_in_order_as_decoding_all_at_once(samples, workers):
    pixels, ok, failed = load_pixels(samples, GREY16)
    batches = list(iter_pixel_batches(samples, GREY16, batch_size=7, workers=workers))
    assert len(batches) == -(-len(samples) // 7)
    assert [i for b in batches for i in b.ok] == ok
    assert [f for b in batches for f in b.failed] == failed == [("c1/003.png", failed[0][1])]
    np.testing.assert_array_equal(np.concatenate([b.pixels for b in batches]), pixels)


def test_decoding_runs_at_most_two_batches_ahead_of_the_consumer(samples, monkeypatch):
    """While the consumer holds batch i, images of batches i + 1 and i + 2 are decoded and no others are
    handed to the decoding threads. Gated on events, not on sleeping: the read-ahead is awaited until it has
    happened, and the bound is checked on the decodes handed out, which are all known when a batch is
    returned."""
    handed_out, decoded = [], []
    read_ahead = threading.Event()
    real = spray.data._decode

    class CountingPool(ThreadPoolExecutor):
        def submit(self, *args, **kwargs):
            handed_out.append(args[1].id)
            return super().submit(*args, **kwargs)

    def decode(path, image):
        try:
            return real(path, image)
        finally:  # an image that fails to decode counts too
            decoded.append(path)
            if len(decoded) == 3 * 4:  # the batch in hand and two ahead
                read_ahead.set()

    monkeypatch.setattr(spray.data, "ThreadPoolExecutor", CountingPool)
    monkeypatch.setattr(spray.data, "_decode", decode)
    batches = iter_pixel_batches(samples, GREY16, batch_size=4, workers=2)
    held = [next(batches)]
    assert read_ahead.wait(timeout=60), "the threads never decoded the two batches ahead"
    assert handed_out == [s.id for s in samples[: 3 * 4]]  # and nothing beyond them, of 30 samples
    for batch in batches:
        held.append(batch)
        assert len(handed_out) <= min(len(samples), (len(held) + 2) * 4)
    assert len(held) == -(-len(samples) // 4)


def test_a_shard_streams_its_relevance_into_a_chunked_store_equal_to_one_pass(samples, tmp_path):
    case = tmp_path / "case"
    model = ModelConfig(factory=f"{case / 'models.py'}:build", weights=case / "model.pt")
    attribution = LrpAttribution(batch_size=4, loader_workers=2)
    token = model_token(model)
    entry = cached_stream(str(tmp_path / "cache"), "attribute", "k", attribute_shard, samples[8:20], 1, model,
                          token, attribution, GREY16)
    arrays, meta = entry.read()
    stored = entry.open_array("relevance")
    assert "relevance" not in arrays  # never in the npz: it is read back chunk by chunk
    assert stored.shape == (11, 1, 16, 16) and stored.chunks[0] == 4  # c1/003.png is skipped
    assert [s[0] for s in meta["skipped"]] == ["c1/003.png"]

    pixels, ok, _ = load_pixels(samples[8:20], GREY16)
    engine = prepare_attributor(model, attribution, GREY16, token)
    logits, relevance = engine(to_model_input(pixels, GREY16), torch.full((len(pixels),), 1))
    assert arrays["index"].tolist() == ok
    np.testing.assert_allclose(stored[:], relevance.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(arrays["logits"], logits.detach().numpy(), rtol=1e-5, atol=1e-6)

    # preprocessing reads the store chunk by chunk and gets the maps of preprocessing everything at once
    config = PreprocessingConfig(size=(8, 8))
    pre, pre_meta = preprocess_shards([entry], [samples[8:20]], config)
    np.testing.assert_allclose(pre["maps"], preprocess(stored[:], config), rtol=1e-6)
    assert pre_meta["ids"] == [samples[8 + i].id for i in ok]


def test_a_failing_shard_leaves_no_staging_folder(samples, tmp_path):
    def explode(folder, *args):
        (folder / "partial.bin").write_bytes(b"half")
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        cached_stream(str(tmp_path / "cache"), "attribute", "k", explode)
    assert list((tmp_path / "cache" / "attribute").iterdir()) == []
