"""Each experiment's `collect` on the committed runs, into a temporary --results: the same tables as the committed
ones, to the byte, and its figures."""
import shutil
import sys

import pytest

from conftest import REPO, load_script

CASES = {  # script, its area under results/, extra collect flags, the tables it writes, the figures it draws
    "table2": ("experiments/classification/table2.py", "classification", [], ["imagenette.json", "imagenette.md"],
               ["fig3_val_curves.png", "fig6_acc_vs_gmacs.png"]),
    "camvid": ("experiments/segmentation/camvid.py", "segmentation", [], ["camvid.json", "camvid.md"],
               ["fig6_miou_vs_gmacs.png", "fig5_camvid.png"]),
    "joint": ("experiments/joint/run.py", "joint", [], ["summary.json", "summary.md"],
              ["fig7_accuracy.png", "fig11_compression.png"]),
    "speed": ("experiments/speed/run.py", "speed", ["--out", "{speed_json_dir}"], ["h200.json", "speed.md"],
              ["fig12.png"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_collect_reproduces_the_committed_tables(name, tmp_path, monkeypatch, capsys):
    script, area, extra, tables, figures = CASES[name]
    committed = REPO / "results" / area
    speed_in = tmp_path / "speed-in"          # speed's collect reads the run's speed.json: the committed card's file
    speed_in.mkdir()
    shutil.copyfile(REPO / "results" / "speed" / "h200.json", speed_in / "speed.json")
    out = tmp_path / "results"
    argv = ["collect", "--results", str(out)] + [f.format(speed_json_dir=speed_in) for f in extra]
    monkeypatch.setattr(sys, "argv", [script, *argv])
    load_script(script).main()
    for t in tables:
        assert (out / t).read_text() == (committed / t).read_text(), t
    for f in figures:
        assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / f).stat().st_size > 10_000, f
    printed = capsys.readouterr().out
    md = next(t for t in tables if t.endswith(".md"))
    assert (out / md).read_text().splitlines()[2] in printed        # its first row is printed too
