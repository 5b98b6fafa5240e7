"""Side-by-side samples of finished study runs: two rows per run, one image per class (prompt c names class c,
seeds 0-19 shared between the runs), upscaled 3x. Reads the exports under runs/fashion-study/ (not committed):
    .venv/bin/python -m benchmarks.fashion.sample_grid sb-x0err@2000-s1 full-ttur5-guid2-1-x0err@300-s1 \
        --out benchmarks/results/swiftbrush_vs_tiue.png
"""

import argparse

from benchmarks.fashion.study import WORK


def main() -> None:
    from examples.fashion.data import all_captions
    from loopfree.images import image_grid
    from loopfree.pipeline import TiUEPipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="study run names (folders of runs/fashion-study with export/)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    captions = all_captions()
    prompts = [captions[c * 8] for c in range(10)]  # the first caption of each class, in class order
    images = []
    for name in args.runs:
        pipe = TiUEPipeline.from_pretrained(WORK / name / "export")
        for row in range(2):
            images += pipe(prompts, seeds=list(range(10 * row, 10 * row + 10))).images
    image_grid([im.resize((im.width * 3, im.height * 3), 0) for im in images], cols=10).save(args.out)
    print(f"{args.out}: rows {', '.join(f'{n} (2)' for n in args.runs)}; columns: {', '.join(prompts)}")


if __name__ == "__main__":
    main()
