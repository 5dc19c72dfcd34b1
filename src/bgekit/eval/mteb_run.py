"""MTEB and C-MTEB task lists by name: ``mteb.evaluate`` over a bgekit model
(:class:`~bgekit.eval.MtebEncoder`), mteb's own result files (its cache folder under the
output), the reference's C-MTEB summary (main score x 100 per task, grouped by task type,
with averages) and the report (:mod:`bgekit.eval.report`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bgekit.errors import InputError
from bgekit.eval.mteb_adapter import MtebEncoder
from bgekit.eval.report import SuiteScores, write_report
from bgekit.io import atomic_write
from bgekit.models import Embedder

logger = logging.getLogger(__name__)

# C-MTEB as mteb names it.
C_MTEB = "MTEB(cmn, v1)"


def mteb_tasks(
    benchmark: str | None = None, names: Sequence[str] = (), task_types: Sequence[str] = ()
) -> list[Any]:
    """The tasks of ``benchmark`` (e.g. ``"C-MTEB"``, ``"MTEB(eng, v2)"``) or named ones,
    kept to ``task_types`` (``Retrieval``, ``STS``, ...) when given."""
    try:
        import mteb
    except ImportError:
        raise InputError("MTEB tasks need mteb: pip install 'bgekit[mteb]'") from None
    if benchmark is None and not names:
        raise InputError("give a benchmark (e.g. C-MTEB) or task names")
    if benchmark is not None:
        name = C_MTEB if benchmark.strip().lower() in ("c-mteb", "cmteb") else benchmark
        try:
            tasks = list(mteb.get_benchmark(name).tasks)
        except (KeyError, ValueError):
            known = ", ".join(sorted(b.name for b in mteb.get_benchmarks())[:12])
            raise InputError(f"mteb has no benchmark {benchmark!r} (some it has: {known}, ...)") from None
        if names:
            tasks = [t for t in tasks if t.metadata.name in set(names)]
    else:
        try:
            tasks = list(mteb.get_tasks(tasks=list(names)))
        except (KeyError, ValueError) as e:
            raise InputError(f"unknown MTEB task: {e}") from None
        missing = sorted(set(names) - {t.metadata.name for t in tasks})
        if missing:
            raise InputError(f"mteb has no task {', '.join(missing)}")
    if task_types:
        tasks = [t for t in tasks if t.metadata.type in set(task_types)]
    if not tasks:
        raise InputError("no MTEB task left to run (check the names and types)")
    return tasks


def evaluate_mteb(
    embedder: Embedder,
    tasks: Sequence[Any],
    output_dir: str | Path,
    *,
    name: str = "mteb",
    task_instructions: dict[str, str] | None = None,
) -> SuiteScores:
    """Run ``tasks``; mteb's results under ``output_dir/mteb-results`` (tasks done before are
    not run again), ``output_dir/summary.json`` as the reference's C-MTEB summary
    (``{task type: {task: score x 100, "Avg": ...}, "Avg": ...}``) and the report. A task
    whose data cannot be loaded (offline) is named in one error after the others ran."""
    import mteb
    from mteb.cache import ResultCache

    out = Path(output_dir)
    model = MtebEncoder(embedder, task_instructions=task_instructions)
    cache = ResultCache(cache_path=out / "mteb-results")
    result = mteb.evaluate(model, list(tasks), cache=cache, raise_error=False, show_progress_bar=False)
    done = {r.task_name: r for r in result.task_results}
    failed = [t.metadata.name for t in tasks if t.metadata.name not in done]
    by_type: dict[str, dict[str, float]] = {}
    scores: dict[str, dict[str, float]] = {}
    for t in tasks:
        r = done.get(t.metadata.name)
        if r is None:
            continue
        # the reference's summary reads the first of these splits the task has
        split = next((x for x in ("test", "dev", "validation") if x in r.scores), None)
        main = float(r.get_score(splits=[split] if split else None))
        by_type.setdefault(t.metadata.type, {})[t.metadata.name] = round(100 * main, 2)
        scores[t.metadata.name] = {"main_score": main}
    summary: dict[str, Any] = {}
    for kind, per in by_type.items():
        summary[kind] = {**per, "Avg": round(sum(per.values()) / len(per), 2)}
    if by_type:
        every = [v for per in by_type.values() for v in per.values()]
        summary["Avg"] = round(sum(every) / len(every), 2)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "summary.json") as f:
        f.write(json.dumps(summary, indent=2).encode())
    report = SuiteScores(name, "mteb", model.name, "main_score", {"dense": scores})
    if scores:
        write_report(report, out)
    if failed:
        raise InputError(
            f"{len(failed)} of {len(tasks)} MTEB tasks did not run (their data could not be loaded: "
            f"offline, or not in the hub cache): {', '.join(failed[:6])}{', ...' if len(failed) > 6 else ''}"
            + (f"; the others are in {out}" if scores else "")
        )
    return report
