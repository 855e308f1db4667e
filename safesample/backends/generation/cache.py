"""The generation cache: outputs kept on disk, keyed by (model fingerprint, engine, dtype,
settings, prompt hash), written chunk by chunk, so a rerun or a run after a crash only generates
what is new.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from safesample.reporter import Advance

if TYPE_CHECKING:
    from safesample.backends.generation.base import Engine


def cached_generate(engine: "Engine", prompts: list[str], *, max_new_tokens: int | None = None,
                    cache: bool = True, progress: Advance | None = None, namespace: str = "generations",
                    purpose: str = "generate", errors: dict[int, str] | None = None) -> tuple[list[str], int]:
    """Generate for `prompts`, reusing cached outputs; returns (outputs, number of cache hits).

    Keyed by (model fingerprint, engine, dtype, max new tokens, max model len, purpose) and the
    prompt text, so a changed prompt template, model or setting never reuses an output made under
    another. Outputs are written to the cache chunk by chunk (`engine.cache_chunk` prompts), so
    a crash or Ctrl-C keeps what was generated. A prompt the engine could not run gets "" (never
    cached) and, when `errors` is given, its reason under its index.
    """
    from safesample.cache import Cache, settings_key, text_key

    new_tokens = max_new_tokens or getattr(engine, "max_new_tokens", None)
    scope = settings_key(model=engine.fingerprint, engine=engine.name, max_new_tokens=new_tokens,
                         decoding="greedy", purpose=purpose, dtype=getattr(engine, "dtype", None),
                         max_model_len=getattr(engine, "max_model_len", None))
    keys = [text_key(p) for p in prompts]
    fresh: dict[str, str] = {}
    failed: dict[str, str] = {}
    with Cache(namespace, scope, enabled=cache) as store:
        found = store.get_many(keys)
        missing = [i for i, k in enumerate(keys) if k not in found]
        if progress and len(prompts) - len(missing):
            progress(len(prompts) - len(missing))
        # Unique missing prompts only: duplicated rows are generated once.
        todo = list(dict.fromkeys(keys[i] for i in missing))
        first = {keys[i]: i for i in reversed(missing)}
        step = max(int(getattr(engine, "cache_chunk", 0) or 256), 1)
        for start in range(0, len(todo), step):
            part = todo[start:start + step]
            outputs = engine.generate([prompts[first[k]] for k in part], max_new_tokens=new_tokens,
                                      progress=progress)
            if len(outputs) != len(part):
                raise RuntimeError(f"the engine returned {len(outputs)} outputs for {len(part)} prompts")
            reasons = getattr(engine, "last_errors", None) or {}
            done = []
            for j, (k, text) in enumerate(zip(part, outputs)):
                if text is None:
                    failed[k] = reasons.get(j, "the engine returned no output")
                else:
                    fresh[k] = text
                    done.append((k, text.encode("utf-8", "surrogatepass")))
            store.put_many(done)
    texts = []
    for i, k in enumerate(keys):
        if k in found:
            texts.append(found[k].decode("utf-8", "surrogatepass"))
        elif k in fresh:
            texts.append(fresh[k])
        else:
            texts.append("")
            if errors is not None:
                errors[i] = failed[k]
    return texts, len(prompts) - len(missing)
