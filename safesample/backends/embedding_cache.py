"""Texts to vectors through the content-hash cache: each distinct text embedded once, cached
ones read back, the model loaded only when something is missing.

Shared by every stage that embeds (`embed`, `cluster --reference`, `select --exclude` and
`--contrast`, the learned refusal judge), so they all fill and read one cache scope per model.
The rest is embedded shortest first in chunks, so batches hold texts of similar length (little
padding) and each finished chunk is cached at once (an interrupted run keeps its progress).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from safesample.cache import Cache, settings_key, text_key
from safesample.errors import DataError
from safesample.reporter import SILENT, Advance, Reporter

if TYPE_CHECKING:
    import numpy as np

    from safesample.backends.embedding import Encoder

CACHE_NAMESPACE = "embeddings"
_CHUNK_BATCHES = 8  # batches per cached chunk


@dataclass
class EmbedStats:
    rows: int = 0
    distinct: int = 0
    cached: int = 0
    embedded: int = 0
    dim: int = 0
    seconds: float = 0.0


def embed_texts(texts: Sequence[str], encoder_factory: Callable[[], "Encoder"], cache: Cache | None = None,
                batch_size: int = 64, progress: Advance | None = None,
                stats: EmbedStats | None = None) -> "np.ndarray":
    """(len(texts), dim) float32 vectors: each distinct text once, cached ones from `cache`.

    `encoder_factory` is called only when some text is not cached, so a fully cached rerun never
    loads (or even imports) a model.
    """
    import numpy as np

    start = time.monotonic()
    stats = stats if stats is not None else EmbedStats()
    index: dict[str, int] = {}
    positions = np.fromiter((index.setdefault(t, len(index)) for t in texts), dtype=np.int64, count=len(texts))
    unique = list(index)
    keys = [text_key(t) for t in unique]
    found = cache.get_many(keys) if cache is not None else {}
    sizes = {len(v) for v in found.values()}
    if len(sizes) > 1:  # several sizes under one model: the cache is inconsistent, recompute all
        found, sizes = {}, set()
    dim = sizes.pop() // 4 if sizes else 0
    todo = [i for i, key in enumerate(keys) if key not in found]
    stats.rows, stats.distinct, stats.embedded = len(texts), len(unique), len(todo)
    stats.cached = len(unique) - len(todo)
    vectors = np.empty((len(unique), dim), np.float32) if dim else None
    if vectors is not None:
        for i, key in enumerate(keys):
            if key in found:
                vectors[i] = np.frombuffer(found[key], dtype=np.float32)
    if todo:
        encoder = encoder_factory()
        todo.sort(key=lambda i: len(unique[i]))  # similar lengths batch together: less padding
        chunk = batch_size * _CHUNK_BATCHES
        for lo in range(0, len(todo), chunk):
            part = todo[lo:lo + chunk]
            out = np.asarray(encoder.encode([unique[i] for i in part], batch_size), dtype=np.float32)
            if vectors is None:
                dim = out.shape[1]
                vectors = np.empty((len(unique), dim), np.float32)
            if out.shape[1] != dim:
                raise DataError(f"the model gives {out.shape[1]}-d vectors, but the cache holds {dim}-d ones "
                                "for the same model", "rerun with --no-cache, or clear the cache folder")
            vectors[part] = out
            if cache is not None:
                cache.put_many((keys[i], out[j].tobytes()) for j, i in enumerate(part))
            if progress:
                progress(len(part))
    if vectors is None:  # no rows at all: the model still says how wide the column is
        dim = int(encoder_factory().dim)
        vectors = np.zeros((0, dim), np.float32)
    stats.dim = dim
    stats.seconds = time.monotonic() - start
    return vectors if len(unique) == len(texts) else vectors[positions]


def cache_for(settings: dict[str, str], enabled: bool = True) -> Cache:
    return Cache(CACHE_NAMESPACE, settings_key(**settings), enabled=enabled)


class CachedEncoder:
    """An encoder (`.encode(texts)`, `.name`) over the embedding cache `embed` fills: vectors of
    texts embedded before, by `embed` or here, come from the cache, and the model loads only for
    the rest. What the learned refusal judge hands its features, so re-judging the same responses
    (or judging responses already embedded) costs no model time."""

    def __init__(self, model: str | None = None, backend: str = "auto", *, enabled: bool = True,
                 reporter: Reporter = SILENT):
        from safesample.backends.embedding import DEFAULT_BATCH_SIZE, choose_backend, resolve_model

        self._ref = resolve_model(model)
        self._backend = choose_backend(backend, self._ref, reporter=reporter)
        self._settings = self._ref.settings(self._backend)  # the cache scope: hashes the model files once
        self._batch_size = DEFAULT_BATCH_SIZE
        self._enabled, self._reporter = enabled, reporter
        self._encoder: "Encoder | None" = None
        self.name = self._ref.name
        self.stats = EmbedStats()

    def _load(self) -> "Encoder":
        if self._encoder is None:
            from safesample.backends.embedding import load_encoder

            self._encoder = load_encoder(self._ref, self._backend, self._batch_size, reporter=self._reporter)
        return self._encoder

    @property
    def loaded(self) -> bool:
        """Whether the model had to be loaded (some text was not cached)."""
        return self._encoder is not None

    def encode(self, texts: Sequence[str], batch_size: int | None = None) -> "np.ndarray":
        with cache_for(self._settings, enabled=self._enabled) as cache:
            return embed_texts(texts, self._load, cache, batch_size=batch_size or self._batch_size,
                               stats=self.stats)


def count_cached(texts: Sequence[str], cache: Cache) -> tuple[int, int]:
    """(distinct texts, how many of them are cached), without loading a model."""
    unique = list(dict.fromkeys(texts))
    return len(unique), len(cache.get_many([text_key(t) for t in unique]))
