"""``+bf16`` embedders (``minilm+bf16``): bf16 autocast around the model, a fingerprint of their own, and
vectors close to fp32's."""

from __future__ import annotations

import numpy as np
import pytest

from agentrec.core.errors import UsageError
from agentrec.retrieval.embedders import get_embedder

TEXTS = ["Toy Story (1995). Genres: Animation, Children's, Comedy.", "Pelara Round Mint Travel Ladle Home PJ-823.",
         "GoldenEye (1995). Genres: Action, Adventure, Thriller.", "a kettle"]


def test_the_suffix_names_a_bf16_embedder_with_its_own_fingerprint():
    fp32, bf16 = get_embedder("minilm"), get_embedder("minilm+bf16")
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    assert bf16.name == "minilm+bf16" and bf16.fingerprint == fp32.fingerprint + "|bf16"
    assert "|bf16" not in fp32.fingerprint  # fp32 caches made before the option stay valid
    assert get_embedder("st:some/model+bf16").fingerprint.endswith("|bf16")
    assert get_embedder("hf:some/model+bf16").name == "hf:some/model+bf16"
    for bad in ("bogus+bf16", "st:+bf16", "minilm+fp16"):
        with pytest.raises(UsageError, match="unknown embedder"):
            get_embedder(bad)


def test_bf16_vectors_are_unit_rows_close_to_fp32():
    fp32 = get_embedder("minilm").embed(TEXTS)
    bf16 = get_embedder("minilm+bf16").embed(TEXTS)
    assert bf16.dtype == np.float32 and bf16.shape == fp32.shape
    np.testing.assert_allclose(np.linalg.norm(bf16, axis=1), 1.0, atol=1e-5)
    assert (fp32 * bf16).sum(1).min() > 0.995
