"""Sentence embeddings of a text column (or a template over several), cached by content.

Each distinct text is embedded once; texts already in the cache (same model, backend and text)
are not embedded again, so a rerun or a rerun after appending rows costs only what is new. The
rest is embedded shortest first in chunks, so batches hold texts of similar length (little
padding) and each finished chunk is cached at once (an interrupted run keeps its progress).
The model is loaded only when something is missing from the cache.
"""

from __future__ import annotations

import json
import re
import string
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from safesample.cache import Cache, settings_key, text_key
from safesample.errors import DataError, UsageError
from safesample.reporter import SILENT, Advance, Reporter
from safesample.schema import require
from safesample.vectors import COLUMN, embedding_field, put_embeddings

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from safesample.backends.embedding import Encoder

CACHE_NAMESPACE = "embeddings"
_CHUNK_BATCHES = 8  # batches per cached chunk


@dataclass
class TextSpec:
    """What to embed: one column, or a template such as "{instruction}\\n{response}"."""

    text: str = "instruction"
    template: str | None = None

    @property
    def columns(self) -> list[str]:
        if self.template is None:
            return [self.text]
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None]
        except ValueError as exc:
            raise UsageError(f"--template {self.template!r} is not a valid template: {exc}",
                             "name columns in braces, e.g. \"{instruction}\\n{response}\"; write {{ for a "
                             "literal brace") from exc
        if not fields or any(not f or f.isdigit() for f in fields):
            raise UsageError(f"--template {self.template!r} names no columns",
                             "name columns in braces, e.g. \"{instruction}\\n{response}\"")
        return list(dict.fromkeys(fields))

    def describe(self) -> str:
        return json.dumps({"template": self.template} if self.template else {"text": self.text})

    @staticmethod
    def parse(described: str | None) -> "TextSpec | None":
        try:
            spec = json.loads(described) if described else None
        except ValueError:
            return None
        if not isinstance(spec, dict):
            return None
        return TextSpec(template=spec["template"]) if spec.get("template") else \
            TextSpec(text=spec.get("text") or "instruction")


def unescape(template: str) -> str:
    r"""Turn the `\n` and `\t` a shell passes through literally into newline and tab."""
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m.group(1)], template)


def texts_of(table: "pa.Table", spec: TextSpec, command: str = "embed",
             choose: str = "--text COLUMN or --template") -> list[str]:
    """The text to embed for every row; a missing column or a null value is a DataError."""
    import pyarrow as pa

    columns = spec.columns
    try:
        require(table, columns, command)
    except DataError as exc:
        raise DataError(exc.message, f"pick the text to embed with {choose}; {exc.hint}") from exc
    values: dict[str, list] = {}
    for name in columns:
        col = table.column(name)
        if col.null_count:
            import pyarrow.compute as pc

            first = table.filter(pc.is_null(col)).column("id")[0].as_py() if "id" in table.column_names else "?"
            raise DataError(f"column {name!r} has {col.null_count} empty (null) values (first in row id "
                            f"{first!r}); there is no text to embed there",
                            f"drop or fill those rows first, or pick another text with {choose}")
        if not pa.types.is_string(col.type) and not pa.types.is_large_string(col.type):
            try:
                col = col.cast(pa.string())
            except pa.ArrowException as exc:
                raise DataError(f"column {name!r} of type {col.type} cannot be embedded as text",
                                f"pick a text column with {choose}") from exc
        values[name] = col.to_pylist()
    if spec.template is None:
        return values[spec.text]
    fmt = spec.template.format
    return [fmt(**dict(zip(columns, row))) for row in zip(*(values[c] for c in columns))]


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


# --------------------------------------------------------------------------------------------
# the stage


@dataclass
class EmbedOptions:
    text: str = "instruction"
    template: str | None = None  # overrides `text`; \n and \t already unescaped
    model: str = "all-MiniLM-L6-v2"
    backend: str = "auto"
    batch_size: int = 64
    cache: bool = True

    @property
    def spec(self) -> TextSpec:
        return TextSpec(text=self.text, template=self.template)


@dataclass
class EmbedResult:
    table: "pa.Table"
    model: str
    backend: str
    stats: EmbedStats


def validate(options: EmbedOptions) -> None:
    """The checks that need no table: backend name, template syntax."""
    from safesample.backends.embedding import BACKENDS

    if options.backend not in BACKENDS:
        raise UsageError(f"unknown --backend {options.backend!r}", f"pass one of: {', '.join(BACKENDS)}")
    options.spec.columns  # noqa: B018 - validates the template before reading anything


def _describe(spec: TextSpec) -> str:
    return f"template {spec.template!r}" if spec.template else f"column {spec.text!r}"


def plan(table: "pa.Table", options: EmbedOptions) -> list[str]:
    """What --dry-run prints: how many texts are new to the cache; loads no model."""
    from safesample.backends.embedding import choose_backend, resolve_model

    validate(options)
    texts = texts_of(table, options.spec)
    model = resolve_model(options.model)
    chosen = choose_backend(options.backend, model)
    with cache_for(model.settings(chosen), enabled=options.cache) as cache:
        distinct, cached = count_cached(texts, cache)
    return [f"plan: embed {_describe(options.spec)} of {len(texts)} rows ({distinct} distinct texts, {cached} "
            f"cached, {distinct - cached} to compute) with {model.name} on {chosen}, batches of "
            f"{options.batch_size}"]


def embed_table(table: "pa.Table", options: EmbedOptions, *, reporter: Reporter = SILENT,
                load_encoder: Callable[..., "Encoder"] | None = None) -> EmbedResult:
    """The table with `embedding` added (or replaced); `load_encoder(model, backend, batch_size)`
    makes the encoder (default: `safesample.backends.embedding.load_encoder`), called only when
    some text is not cached."""
    from safesample.backends.embedding import choose_backend, resolve_model

    validate(options)
    spec = options.spec
    texts = texts_of(table, spec)
    model = resolve_model(options.model)
    chosen = choose_backend(options.backend, model, reporter=reporter)
    if load_encoder is None:
        from functools import partial

        from safesample.backends import embedding

        load_encoder = partial(embedding.load_encoder, reporter=reporter)
    stats = EmbedStats()
    with cache_for(model.settings(chosen), enabled=options.cache) as cache, \
            reporter.progress(None, f"embedding ({chosen})", unit="texts") as advance:
        vectors = embed_texts(texts, lambda: load_encoder(model, chosen, options.batch_size), cache=cache,
                              batch_size=options.batch_size, progress=advance, stats=stats)
    out = put_embeddings(table, vectors, embedding_field(stats.dim, model.name, chosen, spec.describe(), COLUMN))
    rate = f", {stats.embedded / stats.seconds:.0f} texts/s" if stats.embedded and stats.seconds > 0 else ""
    reporter.info(f"embedded {_describe(spec)} of {stats.rows} rows: {stats.distinct} distinct texts, "
                  f"{stats.cached} from the cache, {stats.embedded} computed with {model.name} on {chosen} "
                  f"({stats.dim} dims, {stats.seconds:.1f} s{rate})")
    return EmbedResult(out, model.name, chosen, stats)
