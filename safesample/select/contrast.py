"""Contrast rows: benign look-alikes of the safety picks, answered normally.

Safety rows teach a model to refuse; the cost is over-refusal of safe requests that look like
harmful ones ("kill a Python process", "shoot a photo"). `select --contrast BENIGN` adds, next to
the picks, rows of BENIGN that are close to them (cosine of the instruction embeddings) and
benign, each with its own (normal) answer, so fine-tuning sees the boundary and not a blanket
refusal.

How the look-alikes are chosen (deterministic; no randomness):

1. Candidates: the rows of BENIGN with an instruction and an answer, benign by label where labels
   exist (`harmful_request` not true, `harmful_response` not true, the answer not a `refusal`,
   `behavior` empty or `benign_compliance`: a refusing answer would teach the very over-refusal
   contrast rows are meant to undo), none sharing an id or normalised text with a pick or an
   earlier candidate, none that `--exclude` would drop (normalised text, or cosine >=
   `--exclude-threshold` to an evaluation prompt), none a near duplicate of a pick (cosine >=
   `--dedup`).
2. Scores: cosine between the candidate's and the pick's embeddings, plus, with `lexical` > 0,
   `lexical` x the weight of the most harmful-sounding word they share (`lexical_weights`: a
   word's log-odds of appearing in the safety pool rather than in BENIGN, scaled to [0, 1]).
3. Round-robin over the picks: in each round every pick gets its nearest unused candidate, the
   picks whose nearest candidate is closest served first (the boundary most at risk), until the
   count is reached; a candidate within `--dedup` of a look-alike already chosen is skipped.
   No pick gets a second look-alike before every pick had its first.

The similarity of 20,000 candidates to 200 picks is one (20,000 x d) @ (d x 200) product; only
each pick's top candidates are kept, so the Python loop runs over look-alikes, not rows.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from safesample.errors import DataError, UsageError
from safesample.select.exclusions import normalise
from safesample.texts import blank_rows

if TYPE_CHECKING:
    import pyarrow as pa

    from safesample.select.exclusions import EmbedTexts, Exclusions

SAFETY, CONTRAST = "safety", "contrast"
ROLE_COLUMNS = ("select_role", "contrast_for")
# Half as many look-alikes as safety picks: enough that most harm categories of a 100-row budget
# get boundary examples, few enough that each is close to its pick (the nearest candidates go
# first) and the safety signal stays the larger one.
DEFAULT_SHARE = 0.5
MAX_SHARE = 10.0
TEXT_COLUMNS = ("instruction", "prompt")
ANSWER_COLUMNS = ("output", "response")
_WORD = re.compile(r"[a-z][a-z'-]{2,}")
_STOP = frozenset("""the and for you your are was were with that this from have has had not but can could
would should will what when where which who whom how why all any some about into over than then them
they their there these those its it's our out use using make made write give tell explain describe
create list provide find get more most very just also like other such each one two may might must
his her him she he we us me my i'm been being does did doing do want need know way ways""".split())


def split_budget(budget: int, share: float, within: bool) -> tuple[int, int]:
    """(safety picks, look-alikes): on top, `share` look-alikes per pick; within the budget, the
    budget split so that look-alikes / picks is `share` (rounded half up)."""
    if not math.isfinite(share) or not 0 < share <= MAX_SHARE:
        raise UsageError(f"--contrast-share {share:g} is outside (0, {MAX_SHARE:g}]",
                         f"it is look-alikes per safety pick; {DEFAULT_SHARE} gives half as many")
    if within:
        contrast = math.floor(budget * share / (1 + share) + 0.5)
        safety = budget - contrast
    else:
        safety, contrast = budget, math.floor(budget * share + 0.5)
    if contrast < 1 or safety < 1:
        raise UsageError(f"--contrast-share {share:g} of a budget of {budget} leaves "
                         f"{safety} safety picks and {contrast} look-alikes",
                         "raise --budget or choose a share that leaves at least one of each")
    return safety, contrast


def text_column(table: "pa.Table", name: str) -> tuple[str, str]:
    """(instruction column, answer column) of a contrast table; a DataError naming what is missing."""
    found = ", ".join(table.column_names) or "no columns"
    text = next((c for c in TEXT_COLUMNS if c in table.column_names), None)
    answer = next((c for c in ANSWER_COLUMNS if c in table.column_names), None)
    if text is None or answer is None:
        missing = "an 'instruction' (or 'prompt')" if text is None else "an 'output' (or 'response')"
        raise DataError(f"--contrast table {name!r} has no {missing} column (found: {found})",
                        "contrast rows are benign (instruction, output) pairs trained on as they are: "
                        "pass e.g. the benign fine-tuning set, or rename its columns first")
    return text, answer


@dataclass
class Candidates:
    """The usable rows of a contrast table: table rows, ids, texts and why the others went."""

    rows: np.ndarray
    ids: list[Any]
    texts: list[str]
    excluded: dict[str, int] = field(default_factory=dict)


def candidates(table: "pa.Table", name: str, pick_ids: Sequence[Any], pick_texts: Sequence[str | None],
               exclusions: "Exclusions | None") -> Candidates:
    """Filter by content and labels (no embeddings yet): see the module docstring, step 1."""
    import pyarrow as pa
    import pyarrow.compute as pc

    text_col, answer_col = text_column(table, name)
    n = table.num_rows
    if "id" not in table.column_names:
        raise DataError(f"--contrast table {name!r} has no 'id' column",
                        "read it through `safesample` (which adds content ids), or add an 'id' column")
    keep = np.ones(n, dtype=bool)
    excluded: dict[str, int] = {}

    def drop(mask: np.ndarray, why: str) -> None:
        count = int((mask & keep).sum())
        excluded[why] = excluded.get(why, 0) + count
        keep[mask] = False

    def flag(col: str) -> np.ndarray:
        values = table.column(col)
        if pa.types.is_null(values.type):
            return np.zeros(n, dtype=bool)
        if not pa.types.is_boolean(values.type):
            raise DataError(f"column {col!r} of --contrast table {name!r} has type {values.type}, not bool",
                            f"{col!r} comes from `safesample label`")
        return pc.fill_null(values, False).to_numpy(zero_copy_only=False).astype(bool)

    texts = table.column(text_col).cast(pa.string()).to_pylist()
    no_text = np.zeros(n, dtype=bool)  # an empty, blank or invisible instruction or answer (texts.is_blank)
    no_text[blank_rows(table.column(text_col).cast(pa.string()))] = True
    no_text[blank_rows(table.column(answer_col).cast(pa.string()))] = True
    drop(no_text, "no_text")
    if "harmful_request" in table.column_names:
        drop(flag("harmful_request"), "harmful_request")
    if "harmful_response" in table.column_names:
        drop(flag("harmful_response"), "harmful_response")
    if "refusal" in table.column_names:
        drop(flag("refusal"), "refusal")
    if "behavior" in table.column_names and not pa.types.is_null(table.column("behavior").type):
        behavior = pc.fill_null(table.column("behavior").cast(pa.string()), "benign_compliance")
        benign = pc.equal(behavior, "benign_compliance").to_numpy(zero_copy_only=False)
        refusing = pc.is_in(behavior, value_set=pa.array(["refusal", "over_refusal"])).to_numpy(zero_copy_only=False)
        drop(refusing, "refusal")
        drop(~benign & ~refusing, "harmful_request")
    ids = table.column("id").to_pylist()
    seen_ids = {i for i in pick_ids if i is not None}
    seen_keys = {normalise(t) for t in pick_texts if t}
    eval_keys = exclusions.keys() if exclusions is not None else set()
    for row in np.flatnonzero(keep):
        key = normalise(texts[row])
        if ids[row] is None or ids[row] in seen_ids:
            why = "duplicate_id"
        elif key in eval_keys:
            why = "eval_exact"
        elif key in seen_keys or not key:
            why = "exact_duplicate"
        else:
            seen_ids.add(ids[row])
            seen_keys.add(key)
            continue
        keep[row] = False
        excluded[why] = excluded.get(why, 0) + 1
    rows = np.flatnonzero(keep)
    return Candidates(rows, [ids[r] for r in rows], [texts[r] for r in rows], excluded)


def candidate_vectors(table: "pa.Table", name: str, cands: Candidates, dim: int,
                      encoder: "EmbedTexts | None", pool_model: str | None) -> np.ndarray:
    """Unit vectors of the candidates: the table's own embeddings (same model and width as the
    pool's), else `encoder(texts)` (the pool's model)."""
    from safesample.vectors import embedding_matrix, embedding_model, unit_rows

    if "embedding" in table.column_names and table.column("embedding").null_count == 0:
        model, _ = embedding_model(table)
        if model and pool_model and model != pool_model:
            raise DataError(f"--contrast table {name!r} was embedded with {model}, the pool with {pool_model}",
                            "drop its 'embedding' column (it is then embedded with the pool's model) or "
                            f"embed it with --model {pool_model}")
        import pyarrow as pa

        sub = table.take(pa.array(cands.rows, pa.int64())) if len(cands.rows) else table.slice(0, 0)
        vectors = embedding_matrix(sub, name=f"--contrast table {name!r}", command="select", unit=True)
    else:
        if encoder is None:
            from safesample.errors import ModelError

            raise ModelError(f"--contrast table {name!r} has no embeddings and no embedding model is "
                             "available to compare it with the pool",
                             f"embed it with the pool's model: safesample embed {name} -o benign.emb.parquet")
        vectors = unit_rows(np.asarray(encoder(cands.texts), dtype=np.float32),
                            name=f"the embeddings of {name!r}") if cands.texts else np.zeros((0, dim), np.float32)
    if len(vectors) and vectors.shape[1] != dim:
        raise DataError(f"the --contrast embeddings have {vectors.shape[1]} dimensions, the pool's {dim}",
                        "embed both with the same model (`safesample embed --model ...`)")
    return vectors


# ---- the lexical signal


def words(text: str | None) -> set[str]:
    return {w.strip("'-") for w in _WORD.findall((text or "").lower())} - _STOP - {""}


def lexical_weights(pool_texts: Sequence[str | None], benign_texts: Sequence[str | None]) -> dict[str, float]:
    """How harmful-sounding each word is: its smoothed log-odds of occurring in a safety-pool
    instruction rather than a benign one, kept when positive, scaled so the largest is 1."""
    pool_df = Counter(w for t in pool_texts for w in words(t))
    benign_df = Counter(w for t in benign_texts for w in words(t))
    n_pool, n_benign = max(len(pool_texts), 1), max(len(benign_texts), 1)
    odds = {w: math.log((c + 0.5) / (n_pool + 1)) - math.log((benign_df.get(w, 0) + 0.5) / (n_benign + 1))
            for w, c in pool_df.items() if c >= 2}
    top = max((v for v in odds.values() if v > 0), default=0.0)
    return {w: v / top for w, v in odds.items() if v > 0} if top else {}


# ---- choosing


@dataclass
class Choice:
    pick: int  # index into the picks
    candidate: int  # index into the candidates
    cosine: float
    word: str | None = None  # the shared harmful-sounding word, when the lexical signal chose it


def choose(pick_vecs: np.ndarray, cand_vecs: np.ndarray, count: int, *, dedup: float | None = 0.95,
           lexical: float = 0.0, pick_texts: Sequence[str | None] = (), cand_texts: Sequence[str | None] = (),
           weights: dict[str, float] | None = None, excluded: dict[str, int] | None = None) -> list[Choice]:
    """Up to `count` look-alikes, round-robin over the picks (module docstring, steps 2-3)."""
    import heapq

    k, m = len(pick_vecs), len(cand_vecs)
    excluded = excluded if excluded is not None else {}
    if not k or not m or count < 1:
        return []
    sims = cand_vecs @ pick_vecs.T  # (m, k) cosines
    usable = np.ones(m, dtype=bool)
    if dedup is not None:
        near = sims.max(axis=1) >= dedup
        excluded["near_duplicate"] = excluded.get("near_duplicate", 0) + int(near.sum())
        usable &= ~near
    scores = sims.copy()
    shared: dict[tuple[int, int], str] = {}
    if lexical > 0 and weights:
        index: dict[str, list[int]] = {}
        for i, text in enumerate(cand_texts):
            for w in words(text):
                if w in weights:
                    index.setdefault(w, []).append(i)
        for j, text in enumerate(pick_texts):
            best = np.zeros(m)
            for w in sorted(words(text) & weights.keys(), key=lambda w: -weights[w]):
                hits = np.array(index.get(w, []), dtype=np.int64)
                if len(hits):
                    better = hits[best[hits] < weights[w]]
                    best[better] = weights[w]
                    for i in better.tolist():
                        shared[(i, j)] = w
            scores[:, j] += lexical * best
    scores[~usable] = -np.inf
    depth = min(m, max(64, 4 * math.ceil(count / k) + 32))
    top = np.argpartition(-scores, depth - 1, axis=0)[:depth] if depth < m else np.tile(np.arange(m)[:, None], k)
    order = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=0), axis=0, kind="stable"), 0)
    orders = [order[:, j] for j in range(k)]
    pointer = np.zeros(k, dtype=np.int64)
    used = ~usable
    chosen_vecs = np.empty((count, pick_vecs.shape[1]), dtype=np.float32)
    out: list[Choice] = []

    def best(j: int) -> int | None:
        """The pick's nearest unused candidate (its whole column, ranked, when the top list runs out)."""
        while True:
            if pointer[j] >= len(orders[j]):
                if len(orders[j]) >= m:
                    return None
                orders[j] = np.argsort(-scores[:, j], kind="stable")  # rare: a long round-robin
                continue
            i = int(orders[j][pointer[j]])
            if not used[i] and np.isfinite(scores[i, j]):
                return i
            pointer[j] += 1

    while len(out) < count:
        heap = []
        for j in range(k):
            i = best(j)
            if i is not None:
                heap.append((-float(scores[i, j]), j))
        if not heap:
            break
        heapq.heapify(heap)
        while heap and len(out) < count:
            _, j = heapq.heappop(heap)
            i = best(j)
            if i is None:
                continue
            if used[i]:
                continue
            top_score = float(scores[i, j])
            if heap and -heap[0][0] > top_score + 1e-12:  # another pick's candidate is closer now
                heapq.heappush(heap, (-top_score, j))
                continue
            if dedup is not None and out and float((chosen_vecs[:len(out)] @ cand_vecs[i]).max()) >= dedup:
                used[i] = True
                excluded["near_duplicate"] = excluded.get("near_duplicate", 0) + 1
                heapq.heappush(heap, (-top_score, j))  # try its next candidate in this round
                continue
            used[i] = True
            chosen_vecs[len(out)] = cand_vecs[i]
            out.append(Choice(j, i, float(sims[i, j]), shared.get((i, j))))
    return out


def eval_similar(cand_vecs: np.ndarray, exclusions: "Exclusions | None") -> np.ndarray:
    """Candidates with cosine >= the threshold to an evaluation prompt (chunked: no m x E matrix
    in one piece for a big contrast table)."""
    out = np.zeros(len(cand_vecs), dtype=bool)
    if exclusions is None or exclusions.embeddings is None or not len(exclusions.embeddings):
        return out
    if exclusions.embeddings.shape[1] != cand_vecs.shape[1]:
        raise DataError(f"the --exclude embeddings have {exclusions.embeddings.shape[1]} dimensions, "
                        f"the --contrast table's {cand_vecs.shape[1]}", "embed both with the same model")
    for lo in range(0, len(cand_vecs), 8192):
        out[lo:lo + 8192] = (cand_vecs[lo:lo + 8192] @ exclusions.embeddings.T).max(axis=1) >= exclusions.threshold
    return out


def random_pairs_mean(pick_vecs: np.ndarray, cand_vecs: np.ndarray, count: int, seed: int) -> float | None:
    """The mean cosine of `count` random candidates to picks dealt round-robin: the baseline."""
    if not len(pick_vecs) or not len(cand_vecs):
        return None
    rng = np.random.default_rng([seed, 99])
    take = rng.choice(len(cand_vecs), size=min(count, len(cand_vecs)), replace=False)
    picks = np.arange(len(take)) % len(pick_vecs)
    return round(float(np.einsum("ij,ij->i", cand_vecs[take], pick_vecs[picks]).mean()), 6)


# ---- the stage step: picks in, picks + look-alikes out


def add_contrast(picked: "pa.Table", pool: "pa.Table", name: str, table: "pa.Table", count: int, *,
                 dedup: float | None, lexical: float, exclusions: "Exclusions | None",
                 embedder: "Any", seed: int, pool_model: str | None) -> tuple["pa.Table", dict[str, Any]]:
    """`picked` (the safety rows) with `select_role`/`contrast_for` added and `count` look-alikes
    from `table` appended; and the report's `contrast` section. `embedder()` makes the encoder
    for a table without embeddings (called only then)."""
    import pyarrow as pa

    from safesample.vectors import embedding_matrix

    pick_vecs = embedding_matrix(picked, name="the picks", command="select", unit=True)
    pool_text = next((c for c in TEXT_COLUMNS if c in picked.column_names), None)
    pick_ids = picked.column("id").to_pylist() if "id" in picked.column_names else [None] * picked.num_rows
    pick_texts = picked.column(pool_text).to_pylist() if pool_text else [None] * picked.num_rows
    cands = candidates(table, name, pick_ids, pick_texts, exclusions)
    vecs = candidate_vectors(table, name, cands, pick_vecs.shape[1],
                             None if embedder is None else _Lazy(embedder), pool_model)
    similar = eval_similar(vecs, exclusions)
    if similar.any():
        cands.excluded["eval_similar"] = int(similar.sum())
        keep = ~similar
        cands = Candidates(cands.rows[keep], [i for i, k in zip(cands.ids, keep) if k],
                           [t for t, k in zip(cands.texts, keep) if k], cands.excluded)
        vecs = vecs[keep]
    detail = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in cands.excluded.items() if v)
    if not len(cands.rows):
        raise DataError(f"no row of the --contrast table {name!r} is left to choose look-alikes from "
                        f"({table.num_rows} rows; excluded {detail or 'none'})",
                        "pass a table of benign (instruction, output) rows that are not evaluation "
                        "prompts or safety rows, e.g. the benign fine-tuning set")
    weights = None
    if lexical > 0:
        texts = pool.column(pool_text).to_pylist() if pool_text and pool_text in pool.column_names else []
        if len(texts) > 50_000:  # word statistics settle long before; a 1M-row pool costs seconds
            texts = [texts[i] for i in np.random.default_rng(seed).choice(len(texts), 50_000, replace=False)]
        weights = lexical_weights(texts, cands.texts)
    choices = choose(pick_vecs, vecs, count, dedup=dedup, lexical=lexical, pick_texts=pick_texts,
                     cand_texts=cands.texts, weights=weights, excluded=cands.excluded)
    if len(choices) < count:
        detail = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in cands.excluded.items() if v)
        raise DataError(f"the --contrast table {name!r} can supply only {len(choices)} of the {count} "
                        f"look-alikes asked for ({table.num_rows} rows; excluded {detail or 'none'})",
                        "lower --contrast-share, pass a larger --contrast table, or relax the exclusions "
                        "(--dedup, --exclude-threshold)")
    rows = table.take(pa.array(cands.rows[[c.candidate for c in choices]], pa.int64()))
    rows = _align(rows, picked, vecs[[c.candidate for c in choices]])
    n = picked.num_rows
    reasons = [f"benign look-alike of {pick_ids[c.pick] if pick_ids[c.pick] is not None else c.pick}, "
               f"cosine {c.cosine:.2f}" + (f", shares {c.word!r}" if c.word else "") for c in choices]
    rows = (rows.append_column("select_reason", pa.array(reasons, pa.string()))
            .append_column("select_rank", pa.array(np.arange(n + 1, n + count + 1), pa.int64()))
            .append_column("select_role", pa.array([CONTRAST] * count, pa.string()))
            .append_column("contrast_for", pa.array([pick_ids[c.pick] for c in choices],
                                                    picked.schema.field("id").type if "id" in picked.column_names
                                                    else pa.string())))
    safety = (picked.drop_columns([c for c in ROLE_COLUMNS if c in picked.column_names])
              .append_column("select_role", pa.array([SAFETY] * n, pa.string()))
              .append_column("contrast_for", pa.nulls(n, rows.schema.field("contrast_for").type)))
    try:
        out = pa.concat_tables([safety, rows], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataError(f"the columns of the pool and of the --contrast table {name!r} do not fit together: "
                        f"{str(exc).splitlines()[0][:200]}",
                        "a column has different types in the two tables; rename or drop it in one") from exc
    cosines = np.array([c.cosine for c in choices])
    report = {
        "source": name, "rows": count, "share": round(count / max(n, 1), 6), "table_rows": table.num_rows,
        "candidate_rows": len(cands.rows), "excluded": {k: v for k, v in cands.excluded.items()},
        "picks_covered": len({c.pick for c in choices}),
        "mean_cosine": round(float(cosines.mean()), 6), "min_cosine": round(float(cosines.min()), 6),
        "random_mean_cosine": random_pairs_mean(pick_vecs, vecs, count, seed),
        "lexical": lexical, "by_shared_word": sum(1 for c in choices if c.word),
    }
    return out, report


class _Lazy:
    """An encoder made on first use from a factory (no model loaded when nothing is embedded)."""

    def __init__(self, factory: "Any"):
        self.factory, self.encoder = factory, None

    def __call__(self, texts: list[str]) -> np.ndarray:
        if self.encoder is None:
            self.encoder = self.factory()
        return self.encoder(texts)


def _align(rows: "pa.Table", picked: "pa.Table", vectors: np.ndarray) -> "pa.Table":
    """Contrast rows under the pool's column names: its instruction and answer columns (e.g.
    `output` -> `response`), its embedding column (field and model of the pool's); columns of an
    earlier `select` dropped."""
    from safesample.tables import put_column
    from safesample.vectors import embedding_column

    rows = rows.drop_columns([c for c in ("select_reason", "select_rank", *ROLE_COLUMNS) if c in rows.column_names])
    names = list(rows.column_names)
    for group in (TEXT_COLUMNS, ANSWER_COLUMNS):
        target = next((c for c in group if c in picked.column_names), None)
        source = next((c for c in group if c in names), None)
        if target is None or source is None or source == target:
            continue
        if target in names:  # the contrast table has both: keep the displaced one aside
            names[names.index(target)] = f"{target}_orig"
        names[names.index(source)] = target
    rows = rows.rename_columns(names)
    field = picked.schema.field("embedding")
    return put_column(rows, "embedding", embedding_column(vectors).cast(field.type), field)
