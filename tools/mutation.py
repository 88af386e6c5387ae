"""A sampled mutation run over the core, with cosmic-ray.

    pip install cosmic-ray
    python tools/mutation.py --sample 200 --seed 1

The core's sources and tests are copied to a scratch directory (the working
tree is never mutated), cosmic-ray lists every mutant of the core modules,
a seeded sample of them is run against the core's tests, and the score and
every surviving mutant (with its diff) are printed. docs/core.md records the
latest run. ``--sample 0`` runs them all (hours on a 2-core machine).
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = [
    "_connection.py",
    "_link.py",
    "_exchanges.py",
    "_exchange.py",
    "_liveness.py",
    "_timers.py",
    "_routes.py",
    "_config.py",
    "_state.py",
    "_delivery.py",
    "_credit.py",
    "_codec.py",
    "_armor.py",
    "_records.py",
    "_errors.py",
    "_events.py",
    "_http.py",
]
# Fast and pointed first: with -x, most mutants die in the first second.
TESTS = [
    "test_state.py",
    "test_timers.py",
    "test_liveness.py",
    "test_link.py",
    "test_delivery.py",
    "test_credit.py",
    "test_core_edges.py",
    "test_records.py",
    "test_codec.py",
    "test_armor.py",
    "test_connection.py",
    "test_http_translation.py",
    "test_core_purity.py",
    "test_fuzz_decoder.py",
    "test_fuzz_connection.py",
    "test_fuzz_agent_http.py",
    "test_connection_stateful.py",
    "../adapters/test_docs.py",  # the docs' worked examples of the core
]


def _annotation_spans(path: Path) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Where a module's type annotations are: under ``from __future__ import
    annotations`` they are never evaluated, so mutating them changes nothing."""
    spans = []
    for node in ast.walk(ast.parse(path.read_text())):
        found: list[ast.expr | None] = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            arguments = node.args
            every = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
            every += [a for a in (arguments.vararg, arguments.kwarg) if a is not None]
            found = [a.annotation for a in every] + [node.returns]
        elif isinstance(node, ast.AnnAssign):
            found = [node.annotation]
        for expr in found:
            if expr is not None and expr.end_lineno is not None and expr.end_col_offset is not None:
                spans.append(
                    ((expr.lineno, expr.col_offset), (expr.end_lineno, expr.end_col_offset))
                )
    return spans


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=200, help="mutants to run (0: all)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per mutant")
    parser.add_argument(
        "--modules", nargs="+", default=MODULES, choices=MODULES, help="only these core modules"
    )
    args = parser.parse_args()
    try:
        from cosmic_ray.work_db import WorkDB, use_db
        from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkResult
    except ImportError:
        print("this needs cosmic-ray: pip install cosmic-ray", file=sys.stderr)
        return 2

    scratch = Path(tempfile.mkdtemp(prefix="bridgeproto-mutation-"))
    for part in ("src", "tests", "docs"):
        shutil.copytree(ROOT / part, scratch / part, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", ".ci/run"):  # (what test_docs reads)
        (scratch / name).parent.mkdir(exist_ok=True)
        shutil.copy(ROOT / name, scratch / name)
    core = scratch / "src" / "bridgeproto"
    tests = " ".join(f"tests/core/{name}" for name in TESTS)
    command = f"{sys.executable} -m pytest -x -q -p no:cacheprovider --hypothesis-seed=0 {tests}"
    modules = json.dumps([str(core / name) for name in args.modules])
    (scratch / "mutation.toml").write_text(
        "[cosmic-ray]\n"
        f"module-path = {modules}\n"
        f"timeout = {args.timeout}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(command)}\n"
        '[cosmic-ray.distributor]\nname = "local"\n'
    )
    env_cmd = ["env", f"PYTHONPATH={scratch / 'src'}"]
    run = dict(cwd=scratch, check=True)
    baseline = subprocess.run([*env_cmd, *command.split()], cwd=scratch)
    if baseline.returncode != 0:
        print("the tests fail without any mutation; fix that first", file=sys.stderr)
        return 1
    cosmic = [*env_cmd, sys.executable, "-m", "cosmic_ray.cli"]
    subprocess.run([*cosmic, "init", "mutation.toml", "session.sqlite"], **run)  # type: ignore[call-overload]

    spans = {core / name: _annotation_spans(core / name) for name in args.modules}
    with use_db(str(scratch / "session.sqlite"), WorkDB.Mode.open) as db:
        every = list(db.work_items)
        items, in_annotations = [], []
        for item in every:
            spec = item.mutations[0]
            start = tuple(spec.start_pos)
            inside = any(a <= start < b for a, b in spans[Path(spec.module_path)])
            (in_annotations if inside else items).append(item)
        total = len(items)
        skipped = [item.job_id for item in in_annotations]
        if args.sample and args.sample < total:
            chosen = set(random.Random(args.seed).sample(range(total), args.sample))
            skipped += [item.job_id for i, item in enumerate(items) if i not in chosen]
        if skipped:
            db.set_multiple_results(skipped, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))
    subprocess.run([*cosmic, "exec", "mutation.toml", "session.sqlite"], **run)  # type: ignore[call-overload]

    counts = {"killed": 0, "survived": 0, "incompetent": 0, "error": 0}
    survivors = []
    with use_db(str(scratch / "session.sqlite"), WorkDB.Mode.open) as db:
        for item, result in db.completed_work_items:
            if result.worker_outcome is WorkerOutcome.SKIPPED:
                continue
            if result.worker_outcome is not WorkerOutcome.NORMAL:
                counts["error"] += 1
            elif result.test_outcome is TestOutcome.SURVIVED:
                counts["survived"] += 1
                survivors.append((item, result))
            elif result.test_outcome is TestOutcome.INCOMPETENT:
                counts["incompetent"] += 1
            else:
                counts["killed"] += 1
    for item, result in survivors:
        spec = item.mutations[0]
        print(f"\nSURVIVED {spec.module_path.name}:{spec.start_pos[0]} {spec.operator_name}")
        print(result.diff or "")
    judged = counts["killed"] + counts["survived"]
    score = 100 * counts["killed"] / judged if judged else 0.0
    print(
        f"\n{len(every)} mutants in the core, {len(in_annotations)} of them in type annotations"
        f" (never evaluated, not run); of the other {total},"
        f" {judged + counts['incompetent'] + counts['error']} run"
        f" (seed {args.seed}): {counts['killed']} killed, {counts['survived']} survived,"
        f" {counts['incompetent']} incompetent, {counts['error']} errors; score {score:.1f} %"
    )
    print(f"session kept in {scratch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
