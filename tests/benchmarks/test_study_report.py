"""The study report is built from its run records alone: regenerated from the committed records, it must equal the
committed fashion_study.md, fashion.csv and README block; a reconstructed record is refused by name; the choice of
recipes reads validation rows only and the target lines follow their definitions. Nothing is trained."""

import json
import shutil
from pathlib import Path

import pytest

from benchmarks.fashion.study import RECORDS
from benchmarks.fashion.study_recipes import RECIPES
from benchmarks.fashion.study_records import RecordError
from benchmarks.fashion.study_report import BEGIN, END, RESULTS, write_report

ROOT = Path(__file__).resolve().parents[2]
REGENERATE = "regenerate with `.venv/bin/python -m benchmarks.fashion.study --report` and commit"


def _block(text: str) -> str:
    return text[text.index(BEGIN):text.index(END) + len(END)]


def test_committed_report_equals_the_one_built_from_the_records(tmp_path):
    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    write_report(ROOT / RECORDS, RECIPES, tmp_path, readme)
    for name in ("fashion_study.md", "fashion.csv"):
        assert (tmp_path / name).read_text() == (ROOT / RESULTS / name).read_text(), f"{name} differs: {REGENERATE}"
    assert _block(readme.read_text()) == _block((ROOT / "README.md").read_text()), f"README block differs: {REGENERATE}"
    for name in ("fashion_study.png", "fashion_tradeoff.png"):
        assert (tmp_path / name).stat().st_size > 0


def _metrics(fid, recall, coverage=0.05, alignment=0.7):
    return {"fid": fid, "precision": 0.1, "recall": recall, "f1": 0.1, "density": 0.02, "coverage": coverage,
            "alignment": alignment}


def _record(records: Path, name: str, val: dict, test: dict | None, steps: int = 600, **extra) -> None:
    records.mkdir(exist_ok=True)
    rows = [{"step": 0, **_metrics(200.0, 0.2), "train_s": 0.0}, {"step": steps, **val, "train_s": float(steps)}]
    (records / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[-1 if steps == 0 else 0:]))
    if test is not None:
        seed = int(name.rsplit("-s", 1)[1])
        (records / f"{name}.test.json").write_text(json.dumps({"seed": seed, "steps": steps, "images": 1000, **test,
                                                               **extra}))


def _study(records: Path) -> None:
    """Teachers at two guidances, two TiUE recipes, one SwiftBrush recipe at the same budget, K transfer."""
    for steps in (4, 50):
        _record(records, f"teacher{steps}-g2-s0", _metrics(170.0, 0.50), _metrics(140.0, 0.40, 0.10), steps=0)
        _record(records, f"teacher{steps}-g4.5-s0", _metrics(180.0, 0.20), _metrics(130.0, 0.20, 0.05), steps=0)
    for seed in (1, 2):
        # lower validation FID, but validation recall below the 50-step teacher's (0.50): not chosen
        _record(records, f"sharp-s{seed}", _metrics(150.0, 0.10), _metrics(100.0, 0.10))
        _record(records, f"diverse-s{seed}", _metrics(160.0, 0.55), _metrics(135.0, 0.45, 0.12))
        _record(records, f"sb-paper-s{seed}", _metrics(250.0, 0.0, alignment=0.65), _metrics(240.0, 0.0, 0.0, 0.62))
        _record(records, f"k2ft-diverse@300-s{seed}", _metrics(165.0, 0.5), _metrics(140.0, 0.4), steps=300)
        _record(records, f"k8ft-diverse@300-s{seed}", _metrics(165.0, 0.5), _metrics(160.0, 0.4), steps=300,
                init_from=f"diverse-s{seed}")


def _report(tmp_path: Path) -> tuple[str, str]:
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN}\nold numbers\n{END}\nrest\n")
    out = tmp_path / "out"
    out.mkdir()
    report = write_report(tmp_path / "records", RECIPES, out, readme).read_text()
    return report, readme.read_text()


def test_choice_on_validation_and_target_lines(tmp_path):
    _study(tmp_path / "records")
    report, readme = _report(tmp_path)
    assert "Chosen: TiUE `diverse` (reaches the recall bar); SwiftBrush: sb-paper." in report
    assert "| 50 steps | 2 | 170.00 | 0.500 | 140.00 | 0.100 | 0.400 | 0.100 | 0.700 | **best** |" in report
    assert "- **D1 MET**" in report  # recall 0.45 >= 0.40 and coverage 0.12 >= 0.10 (the guidance-2 teacher's)
    # the 4-step teacher's best guidance on validation is 2 (test FID 140), not 4.5 (test FID 130)
    assert "- **D2 MET** (best TiUE FID <= the best 4-step teacher's): diverse FID 135.00; teacher4-g2 FID 140.00." in report
    assert "- **D3 MET**" in report and "- **D4 MISSED**" in report and "recall 0.000, not above 0" in report
    # K = 2: 140 / 135 = 1.037 (met); K = 8: 160 / 135 = 1.185 (missed)
    assert "- **D5 MISSED**" in report and "K = 8 is 18.5% above its start (allowed 10%)" in report
    assert readme.startswith("intro\n") and readme.endswith("rest\n") and "old numbers" not in readme
    assert "D1 MET, D2 MET, D3 MET, D4 MISSED, D5 MISSED" in readme
    rows = (tmp_path / "out" / "fashion.csv").read_text().splitlines()
    assert rows[0] == "system,steps,uses_training_images,fid,precision,recall,f1,density,coverage,alignment,seeds,updates"
    assert "TiUE diverse,1 enc + 4 dec,no,135.0000,0.1000,0.4500,0.1000,0.0200,0.1200,0.7000,1;2,600" in rows
    assert len(rows) == 1 + 4 + 2 + 1 + 2  # teachers, TiUE recipes, SwiftBrush, K = 2 and K = 8


def test_d5_judges_only_transfers_from_the_chosen_recipe(tmp_path):
    _study(tmp_path / "records")
    for seed in (1, 2):  # better on validation than diverse's K = 2 transfer, but from sharp, which is not chosen
        _record(tmp_path / "records", f"k2ft-sharp@300-s{seed}", _metrics(120.0, 0.5), _metrics(90.0, 0.4), steps=300)
    report, _ = _report(tmp_path)
    assert "K = 2: k2ft-diverse@300 FID 140.00, 1.037 x its start's" in report and "K = 2: k2ft-sharp" not in report
    assert "| TiUE K=2 k2ft-sharp@300 |" in report  # still a row of the final table


def test_d5_not_measured_when_no_transfer_starts_from_the_choice(tmp_path):
    records = tmp_path / "records"
    _study(records)
    for path in records.glob("k*ft-diverse*"):
        path.rename(path.with_name(path.name.replace("-diverse", "-sharp")))
    for path in records.glob("k8ft-sharp*.test.json"):  # its record names its start
        path.write_text(path.read_text().replace('"diverse-s', '"sharp-s'))
    report, _ = _report(tmp_path)
    assert "- **D5 NOT MEASURED**" in report and "no K = 2 student from the chosen K = 4 recipe" in report


def test_targets_not_measured_without_records(tmp_path):
    _record(tmp_path / "records", "diverse-s1", _metrics(160.0, 0.55), _metrics(135.0, 0.45))
    report, _ = _report(tmp_path)
    assert [f"D{i} NOT MEASURED" in report for i in range(1, 6)] == [True] * 5


@pytest.mark.parametrize("where", ["curve", "test"])
def test_a_reconstructed_record_is_refused_by_name(tmp_path, where):
    _study(tmp_path / "records")
    path = tmp_path / "records" / ("diverse-s2.jsonl" if where == "curve" else "diverse-s2.test.json")
    rows = [json.loads(line) for line in path.read_text().splitlines()] if where == "curve" else [json.loads(path.read_text())]
    rows[-1]["reconstructed"] = "copied from an old table"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(RecordError, match=f"{path.name} is marked 'reconstructed'"):
        _report(tmp_path)


def test_a_miss_smaller_than_the_rounding_is_written_with_enough_digits_to_show_it():
    from benchmarks.fashion.study_tables import _shortfall

    assert _shortfall("coverage", 0.0675, 0.068, higher=True) == "coverage 0.0675 below 0.0680 by 0.0005"
    assert _shortfall("recall", 0.051, 0.214, higher=True) == "recall 0.051 below 0.214 by 0.163"
    assert _shortfall("fid", 125.301, 125.304, higher=False) is None
    assert _shortfall("fid", 133.584, 133.581, higher=False) == "FID 133.584 above 133.581 by 0.003"


def test_regression_rows_whose_pairs_shared_the_test_noise_are_marked_and_explained(tmp_path):
    _study(tmp_path / "records")
    for seed in (1, 2):  # reg1's records do not name their first pair seed (made before the fix); reg0.25's do
        _record(tmp_path / "records", f"full-ttur5-guid2-1-x0err-reg1-s{seed}", _metrics(170.0, 0.2), _metrics(150.0, 0.1))
        _record(tmp_path / "records", f"full-ttur5-guid2-1-x0err-reg0.25-s{seed}", _metrics(170.0, 0.2),
                _metrics(150.0, 0.1), first_pair_seed=2 ** 31)
        _record(tmp_path / "records", f"full-ttur5-guid2-1-x0err-s{seed}", _metrics(170.0, 0.2), _metrics(150.0, 0.1))
    report, _ = _report(tmp_path)
    rows = {line.split(" | ")[0]: line for line in report.splitlines() if line.startswith("| TiUE full-ttur5")}
    assert rows.keys() == {"| TiUE full-ttur5-guid2-1-x0err-reg1 ‡", "| TiUE full-ttur5-guid2-1-x0err-reg0.25",
                           "| TiUE full-ttur5-guid2-1-x0err"}  # only the regression recipe recorded before the fix
    assert report.count("‡") == 2 and "pair i's noise was test image i's" in report
