"""Exclusions: evaluation prompts (decontamination) and duplicates, decided pick by pick."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from safesample.errors import DataError, ModelError, UsageError
from safesample.vectors import embedding_matrix, embedding_model, unit_rows

if TYPE_CHECKING:
    import pyarrow as pa

    from safesample.reporter import Reporter


EmbedTexts = Callable[[list[str]], np.ndarray]


_NON_WORD = re.compile(r"[\W_]+")


def normalise(text: str) -> str:
    """Lower case, punctuation and runs of spaces folded to one space: the exact-match key."""
    return _NON_WORD.sub(" ", text.lower()).strip()


@dataclass
class Exclusions:
    """Evaluation prompts a selection must not contain (decontamination)."""

    texts: list[str] = field(default_factory=list)  # raw prompt texts, normalised when used
    embeddings: np.ndarray | None = None  # unit rows, or None when not available
    threshold: float = 0.9
    sources: list[str] = field(default_factory=list)

    def keys(self) -> set[str]:
        if not hasattr(self, "_keys"):
            self._keys = {normalise(t) for t in self.texts}
        return self._keys


def exclusions_from_tables(tables: Sequence[tuple[str, "pa.Table"]], threshold: float,
                           pool_has_embeddings: bool, embed_texts: Callable[[], EmbedTexts] | None,
                           batch_size: int = 256) -> Exclusions:
    """Read eval tables (`prompt` or `instruction`, optional `embedding`) into an Exclusions.

    Tables without embeddings are embedded with `embed_texts()` (a factory, so no model is
    loaded when every table brings its own vectors or the pool has none to compare with).
    """
    if not 0 < threshold <= 1:
        raise UsageError(f"--exclude-threshold {threshold} is outside (0, 1]",
                         "it is a cosine similarity; 0.9 is a sound default")
    texts: list[str] = []
    vectors: list[np.ndarray] = []
    encoder: EmbedTexts | None = None
    for name, table in tables:
        col = next((c for c in ("prompt", "instruction") if c in table.column_names), None)
        if col is None:
            raise DataError(f"--exclude table {name!r} has neither a 'prompt' nor an 'instruction' column "
                            f"(found: {', '.join(table.column_names) or 'no columns'})",
                            "pass a table of evaluation prompts, e.g. ../shared/data/harmbench")
        part = [t for t in table.column(col).to_pylist() if t]
        texts.extend(part)
        if not pool_has_embeddings:
            continue
        if "embedding" in table.column_names:
            vectors.append(embedding_matrix(table.filter(table.column(col).is_valid()), name=repr(name),
                                            command="select", unit=True))
        elif part:
            if embed_texts is None:
                raise ModelError(f"--exclude table {name!r} has no embeddings and no embedding model "
                                 "is available to compare it with the pool",
                                 f"embed it with the pool's model: safesample embed {name} --text {col} "
                                 "-o eval.embedded.parquet, and pass that to --exclude")
            if encoder is None:
                encoder = embed_texts()
            vectors.append(unit_rows(np.asarray(encoder(part), dtype=np.float32),
                                     name=f"the embeddings of {name!r}"))
    embeddings = np.concatenate(vectors) if vectors else None
    return Exclusions(texts, embeddings, threshold, [name for name, _ in tables])


def default_embedder(pool: "pa.Table", batch_size: int = 256,
                     reporter: "Reporter | None" = None) -> Callable[[], EmbedTexts]:
    """A factory that loads the pool's own embedding model (named on its embedding column, else
    in its provenance). Its vectors go through the `embed` cache (same scope as `safesample
    embed`), so a rerun, or a table `embed` has already seen, embeds nothing again."""

    def factory() -> EmbedTexts:
        model, backend = embedding_model(pool)
        if model is None:
            raise ModelError("the pool's provenance names no embedding model, so the --exclude or "
                             "--contrast prompts cannot be embedded the same way",
                             "embed that table with the pool's model (`safesample embed "
                             "eval.parquet --text prompt -o eval.emb.parquet`) and pass that")
        try:
            from safesample.backends import embedding
            from safesample.backends.embedding_cache import EmbedStats, cache_for, embed_texts
        except ImportError as exc:
            raise ModelError("no embedding backend is installed to embed the --exclude or --contrast prompts",
                             "embed that table with `safesample embed` and pass that") from exc
        ref = embedding.resolve_model(model)
        chosen = embedding.choose_backend(backend or "auto", ref)

        def encode(texts: list[str]) -> np.ndarray:
            stats = EmbedStats()
            with cache_for(ref.settings(chosen)) as cache:
                vectors = embed_texts(texts, lambda: embedding.load_encoder(ref, chosen, batch_size), cache=cache,
                                      batch_size=batch_size, stats=stats)
            if reporter is not None:
                reporter.info(f"embedded {stats.rows} texts with {ref.name}: {stats.cached} from the cache, "
                              f"{stats.embedded} computed ({stats.seconds:.1f} s)")
            return vectors

        return encode

    return factory


def shared(factory: Callable[[], EmbedTexts] | None) -> Callable[[], EmbedTexts] | None:
    """The factory, made once: --exclude and --contrast share one loaded model."""
    if factory is None:
        return None
    made: list[EmbedTexts] = []

    def once() -> EmbedTexts:
        if not made:
            made.append(factory())
        return made[0]

    return once
