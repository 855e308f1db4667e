"""The `embed` stage: sentence embeddings of a text column (or a template over several).

Each distinct text is embedded once; texts already in the cache (same model, backend and text)
are not embedded again, so a rerun or a rerun after appending rows costs only what is new
(`safesample.backends.embedding_cache`). The model is loaded only when something is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from safesample.backends.embedding_cache import EmbedStats, cache_for, count_cached, embed_texts
from safesample.errors import UsageError
from safesample.reporter import SILENT, Reporter
from safesample.texts import TextSpec, texts_of
from safesample.vectors import COLUMN, embedding_field, put_embeddings

if TYPE_CHECKING:
    import pyarrow as pa

    from safesample.backends.embedding import Encoder


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


def prepare(table: "pa.Table", options: EmbedOptions, *, reporter: Reporter = SILENT) -> EmbedOptions:
    """Before any work (an executor calls this with the input, or an empty table of its schema):
    the options and the text columns checked, the backend chosen, so every worker embeds the same
    way and the provenance names the backend used."""
    from dataclasses import replace

    from safesample.backends.embedding import choose_backend, resolve_model

    validate(options)
    texts_of(table, options.spec)
    return replace(options, backend=choose_backend(options.backend, resolve_model(options.model), reporter=reporter))


def provenance(options: EmbedOptions) -> tuple[dict[str, Any], dict[str, str]]:
    """What an `embed` output records: its arguments and the embedding model."""
    from safesample.backends.embedding import resolve_model

    name = resolve_model(options.model).name
    return ({"text": options.text if options.template is None else None, "template": options.template,
             "model": name, "backend": options.backend, "batch_size": options.batch_size, "cache": options.cache},
            {"embedding": name})


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
