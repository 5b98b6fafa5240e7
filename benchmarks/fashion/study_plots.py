"""The study's two figures, from the run records: validation FID over training, and the test FID/recall trade-off."""

from __future__ import annotations

from pathlib import Path

from benchmarks.fashion.study_records import Group, Run


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colours(names: list[str]) -> dict[str, tuple]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab20")
    order = [*range(0, 20, 2), *range(1, 20, 2)]  # the ten strong shades first: neighbours stay distinguishable
    return {name: cmap(order[i % 20]) for i, name in enumerate(sorted(set(names)))}


def plot_curves(runs: list[Run], teacher: dict[int, Group], out: Path) -> Path:
    """Validation FID of every run over its updates, one colour per recipe (any length), one line style per seed;
    the best teacher rows (guidance chosen on validation) as horizontal lines."""
    plt = _pyplot()
    curves = [r for r in runs if r.curve[-1]["step"] > 0]  # the initial student and the teacher rows: points
    colours = _colours([r.group.split("@")[0] for r in curves])
    fig, ax = plt.subplots(figsize=(10, 6), dpi=110)
    for run in curves:
        recipe = run.group.split("@")[0]
        ax.plot([r["step"] for r in run.curve], [r["fid"] for r in run.curve], marker=".", color=colours[recipe],
                linestyle=("-", "--", "-.", ":")[run.seed % 4], label=f"{run.group} s{run.seed}")
    for steps, g in sorted(teacher.items()):
        ax.axhline(g.val("fid"), color="black", linestyle=(":" if steps == 4 else "--"), linewidth=1,
                   label=f"teacher {steps} steps cfg {g.guidance:g}")
    ax.set_xlabel("student updates")
    ax.set_ylabel("validation FID (200 generated vs 1000 training images)")
    ax.set_title("Fashion-MNIST teacher -> students: validation FID over training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_tradeoff(groups: dict[str, Group], out: Path) -> Path:
    """Test FID (x) against test recall (y): one small point per seed and a labelled marker for each group's mean;
    the teacher's 4- and 50-step samplers as lines over guidance."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 7), dpi=110)
    for steps, style in ((4, "s-"), (50, "D-")):
        rows = sorted((g for g in groups.values() if g.kind == "teacher" and g.k == steps), key=lambda g: g.guidance)
        if rows:
            ax.plot([g.test("fid") for g in rows], [g.test("recall") for g in rows], style, color="black",
                    label=f"teacher {steps} steps over guidance")
            for g in rows:
                ax.annotate(f"cfg {g.guidance:g}", (g.test("fid"), g.test("recall")), fontsize=7,
                            textcoords="offset points", xytext=(4, 4))
    students = [g for g in groups.values() if g.kind != "teacher"]
    colours = _colours([g.name for g in students])
    markers = {"init": "*", "tiue": "o", "swiftbrush": "v", "transfer": "P"}
    for g in students:
        ax.scatter(g.per_seed("fid"), g.per_seed("recall"), s=12, color=colours[g.name], alpha=0.5)
        ax.scatter([g.test("fid")], [g.test("recall")], s=60, color=colours[g.name], marker=markers[g.kind],
                   edgecolors="black", linewidths=0.5, label=f"{g.name} (seeds {','.join(map(str, g.seeds))})")
    ax.set_xlabel("test FID (1000 generated vs the first 1000 test images; lower is better)")
    ax.set_ylabel("test recall (higher is better)")
    ax.set_title("Fidelity / diversity trade-off: small points per seed, large markers the mean")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
