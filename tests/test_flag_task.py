"""The flag stage's cache key is the token of what determines its entry."""

from __future__ import annotations

from spray.config import FlaggingConfig, ImageConfig
from spray.flag import store_key

IMAGE = ImageConfig(mode="L", size=(16, 16), mean=[0.0], std=[1.0])


def test_the_flag_key_follows_the_content_of_its_inputs():
    key = store_key(FlaggingConfig(), IMAGE, "analyse-1", "pre-1", "model-1", "recipients-1")
    assert key == store_key(FlaggingConfig(), IMAGE, "analyse-1", "pre-1", "model-1", "recipients-1")
    changed = [
        store_key(FlaggingConfig(threshold=0.9), IMAGE, "analyse-1", "pre-1", "model-1", "recipients-1"),
        store_key(FlaggingConfig(), IMAGE.model_copy(update={"size": (8, 8)}), "analyse-1", "pre-1", "model-1",
                  "recipients-1"),
        store_key(FlaggingConfig(), IMAGE, "analyse-2", "pre-1", "model-1", "recipients-1"),
        store_key(FlaggingConfig(), IMAGE, "analyse-1", "pre-2", "model-1", "recipients-1"),
        store_key(FlaggingConfig(), IMAGE, "analyse-1", "pre-1", "model-2", "recipients-1"),
        store_key(FlaggingConfig(), IMAGE, "analyse-1", "pre-1", "model-1", "recipients-2"),
    ]
    assert len({key, *changed}) == 7
