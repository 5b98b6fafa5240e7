"""The study's report, built from its run records alone (benchmarks/fashion/study.py --report).

Writes fashion_study.md (teacher rows, the choice of recipes on validation, target lines D1-D5, the final table,
the validation curves), fashion.csv, fashion_study.png (validation FID over updates), fashion_tradeoff.png (test FID
against test recall) and the README's block of result numbers between its study-results markers. Nothing here is
typed by hand: tests/benchmarks/test_study_report.py regenerates every file from the committed records
and fails if a committed one differs. A record marked "reconstructed" is refused (study_records.load_runs).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from benchmarks.fashion.study_plots import plot_curves, plot_tradeoff
from benchmarks.fashion.study_records import METRICS, Group, Run, group_runs, load_runs
from benchmarks.fashion.study_tables import (
    MIN_SEEDS,
    Choice,
    choose,
    fmt,
    images_label,
    steps_label,
    system_name,
    target_lines,
    write_csv,
)

RESULTS = Path("benchmarks/results")
README = Path("README.md")
BEGIN, END = "<!-- study-results:begin -->", "<!-- study-results:end -->"
PROTOCOL = ("Validation (every choice): the last evaluation of each run, 200 generated images (fixed prompts and seeds) "
            "against the 1000 shipped Fashion-MNIST TRAINING images (data/fashion-mnist). Test (the final rows, once per "
            "finished run): 1000 generated images (prompt i names class i % 10, seed i) against the first 1000 TEST images. "
            "Each run: one process, one thread, `loopfree.training.train_iteration`, global batch 8.")

SHARED_NOISE = ("‡ Its regression pairs were drawn from seeds 2**40 + i, and torch's CPU generator keeps a seed's low 32 "
                "bits: pair i's noise was test image i's (for 25 of the 1000, with the same prompt too). Validation "
                "(seeds from 10000) is unaffected. Pair seeds are 2**31 + i since; docs/method.md, \"Pair noise that was "
                "evaluation noise\", measures what it changed.")


def _row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _header(*names: str) -> list[str]:
    return [_row(list(names)), _row(["---"] * len(names))]


def teacher_table(groups: dict[str, Group], choice: Choice) -> list[str]:
    lines = _header("sampler", "guidance", "val FID", "val recall", "test FID", "precision", "recall", "coverage",
                    "alignment", "best guidance (val FID)")
    for g in (g for g in groups.values() if g.kind == "teacher"):
        best = "**best**" if choice.teacher.get(g.k) is g else ""
        lines.append(_row([f"{g.k} steps", f"{g.guidance:g}", fmt("fid", g.val("fid")), fmt("recall", g.val("recall")),
                           *(fmt(m, g.test(m)) for m in ("fid", "precision", "recall", "coverage", "alignment")), best]))
    return lines


def choice_section(groups: dict[str, Group], choice: Choice) -> list[str]:
    t50 = choice.teacher.get(50)
    bar = (f"the 50-step teacher's validation recall at its best guidance ({t50.name}: {fmt('recall', t50.val('recall'))})"
           if t50 else "no 50-step teacher row yet, so no recall bar")
    lines = [f"TiUE (K = 4, at least {MIN_SEEDS} seeds with test rows): the lowest mean final validation FID among the "
             f"recipes whose mean final validation recall reaches {bar}; if none does, the lowest mean final validation "
             "FID. SwiftBrush: the highest mean final validation alignment at the chosen TiUE recipe's number of "
             "updates (equal budget).", "",
             *_header("recipe", "kind", "updates", "seeds", "val FID", "val recall", "val alignment", "chosen")]
    for g in (g for g in groups.values() if g.kind in ("tiue", "swiftbrush") and len(g.runs) >= MIN_SEEDS):
        chosen = "**chosen**" if g in (choice.tiue, choice.swiftbrush) else ""
        lines.append(_row([g.name, g.kind, g.updates, ", ".join(map(str, g.seeds)), fmt("fid", g.val("fid")),
                           fmt("recall", g.val("recall")), fmt("alignment", g.val("alignment")), chosen]))
    if choice.tiue is None:
        lines += ["", "No TiUE recipe qualifies for the choice yet."]
    else:
        how = "reaches the recall bar" if choice.tiue_qualified else "none reaches the recall bar: lowest FID taken"
        sb = choice.swiftbrush.name if choice.swiftbrush else f"none at {choice.tiue.updates} updates"
        lines += ["", f"Chosen: TiUE `{choice.tiue.name}` ({how}); SwiftBrush: {sb}."]
    return lines


def final_table(groups: dict[str, Group], choice: Choice) -> list[str]:
    lines = _header("system", "steps", "updates", "seeds", "uses training images", "FID (per seed)",
                    *METRICS[1:])
    for g in groups.values():
        name = system_name(g) + (" (chosen)" if g in (choice.tiue, choice.swiftbrush, *choice.teacher.values()) else "")
        name += " ‡" if g.pair_noise_is_test_noise else ""
        fids = ", ".join(f"{f:.1f}" for f in g.per_seed("fid"))
        lines.append(_row([name, steps_label(g), g.updates, ", ".join(map(str, g.seeds)), images_label(g),
                           f"{g.test('fid'):.2f} ({fids})", *(fmt(m, g.test(m)) for m in METRICS[1:])]))
    if any(g.pair_noise_is_test_noise for g in groups.values()):
        lines += ["", SHARED_NOISE]
    return lines


def validation_table(runs: list[Run]) -> list[str]:
    lines = _header("run", "updates", "initial FID", "final FID", "best FID (update)", "final recall",
                    "final coverage", "final alignment", "s / update", "test row")
    for run in (r for r in runs if r.curve[-1]["step"] > 0):
        c, last = run.curve, run.curve[-1]
        best = min(c, key=lambda r: r["fid"])
        lines.append(_row([run.name, last["step"], f"{c[0]['fid']:.1f}", f"{last['fid']:.1f}",
                           f"{best['fid']:.1f} ({best['step']})", fmt("recall", last["recall"]),
                           fmt("coverage", last["coverage"]), fmt("alignment", last["alignment"]),
                           f"{last['train_s'] / last['step']:.2f}", "yes" if run.test else "no"]))
    return lines


def _brief(g: Group) -> str:
    fids = " / ".join(f"{f:.1f}" for f in g.per_seed("fid"))
    return (f"`{g.name}` ({g.updates} updates, seeds {', '.join(map(str, g.seeds))}): FID {g.test('fid'):.1f} "
            f"({fids}), recall {g.test('recall'):.3f}, coverage {g.test('coverage'):.3f}, "
            f"alignment {g.test('alignment'):.3f}")


def readme_block(groups: dict[str, Group], choice: Choice, targets: list[str]) -> str:
    teachers = "; ".join(f"{k} steps at cfg {g.guidance:g}: FID {g.test('fid'):.1f}, recall {g.test('recall'):.3f}, "
                         f"coverage {g.test('coverage'):.3f}" for k, g in sorted(choice.teacher.items()))
    init = groups.get("init")
    parts = [f"The teacher's best guidance (chosen on validation FID): {teachers or 'not measured'}."]
    parts.append(f"The initial student: FID {init.test('fid'):.1f}." if init else "The initial student: no test row.")
    parts.append(f"Best TiUE recipe (chosen on validation): {_brief(choice.tiue)}." if choice.tiue else
                 "No TiUE recipe has test rows for two seeds yet.")
    if choice.swiftbrush:
        parts.append(f"Best SwiftBrush recipe at the same budget: {_brief(choice.swiftbrush)}.")
    verdicts = [line.split("**")[1] for line in targets if line.startswith("- **")]
    bullets = ["- **Distillation study** (`benchmarks/results/fashion_study.md`, `fashion.csv`, FID curves in "
               "`fashion_study.png`, FID/recall trade-off in `fashion_tradeoff.png`): test FID against the first 1000 "
               "Fashion-MNIST test images, means of the seeds. " + " ".join(parts),
               f"- **Targets** (`fashion_study.md`, \"Targets\"): {', '.join(verdicts)}."]
    wrapped = [textwrap.fill(b, width=110, subsequent_indent="  ", break_on_hyphens=False, break_long_words=False)
               for b in bullets]
    return "\n".join([BEGIN, "<!-- generated by `python -m benchmarks.fashion.study --report` from the run records; "
                      "do not edit -->", *wrapped, END])


def replace_block(readme: Path, block: str) -> None:
    text = readme.read_text()
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise ValueError(f"{readme} must hold the markers {BEGIN} and {END} once each")
    head, rest = text.split(BEGIN)
    readme.write_text(head + block + rest.split(END, 1)[1])


def report_lines(runs: list[Run], groups: dict[str, Group], choice: Choice, targets: list[str],
                 recipes: dict) -> list[str]:
    from benchmarks.fashion.study_recipes import BATCH_SIZES, STARTS

    used = sorted({r.group.split("@")[0] for r in runs} & set(recipes))
    return ["# Distillation study on the Fashion-MNIST teacher", "",
            "Generated by `.venv/bin/python -m benchmarks.fashion.study --report` from the run records in "
            "`benchmarks/results/fashion_study_runs/` alone; a test regenerates it and fails if this file differs. "
            + PROTOCOL, "",
            "## Teacher rows", "", *teacher_table(groups, choice), "",
            "## Choice of the recipes (validation only)", "", *choice_section(groups, choice), "",
            f"## Targets (test split, means of at least {MIN_SEEDS} seeds)", "", *targets, "",
            "## Final table (test split)", "", *final_table(groups, choice), "",
            "Machine-readable: `fashion.csv`. Trade-off (per seed and mean): ![FID/recall trade-off](fashion_tradeoff.png)", "",
            "## Validation curves", "", "![FID over updates](fashion_study.png)", "", *validation_table(runs), "",
            "## Recipes (DistillConfig overrides of the study's base)", "",
            *(f"- `{name}`: {json.dumps(recipes[name]) if recipes[name] else 'the base (paper) recipe'}"
              + (f", global batch {BATCH_SIZES[name]}" if name in BATCH_SIZES else "")
              + (f", starting from the regression-only student {STARTS[name]} (pair_fit.md)" if name in STARTS else "")
              for name in used),
            ""]


def write_report(records: Path, recipes: dict, out: Path = RESULTS, readme: Path = README) -> Path:
    from benchmarks.fashion.study_recipes import BASE

    runs = load_runs(records)
    groups = group_runs(runs, recipes, BASE)
    choice = choose(groups)
    targets = target_lines(groups, {r.name: r for r in runs}, choice)
    plot_curves(runs, choice.teacher, out / "fashion_study.png")
    plot_tradeoff(groups, out / "fashion_tradeoff.png")
    write_csv(groups, out / "fashion.csv")
    replace_block(readme, readme_block(groups, choice, targets))
    report = out / "fashion_study.md"
    report.write_text("\n".join(report_lines(runs, groups, choice, targets, recipes)))
    return report
