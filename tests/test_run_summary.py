"""`make run` ends with a summary a new user can act on (scripts/run_summary.py)."""
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _summary():
    spec = importlib.util.spec_from_file_location("run_summary", REPO / "scripts" / "run_summary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.summary


def test_summary_reports_accuracy_predictions_files_and_next_commands(tmp_path):
    csv = tmp_path / "predictions.csv"
    csv.write_text("path,label,prob,top_k_labels,top_k_probs,error\n"
                   "/d/test/3/a.png,3,0.9,3|5,0.9|0.1,\n/d/test/5/b.png,3,0.6,3|5,0.6|0.4,\n"
                   "/d/test/7/c.png,7,0.8,7|1,0.8|0.2,\n/d/test/1/d.png,,,,,unreadable image\n")
    text = "\n".join(_summary()(csv))
    assert "held-out accuracy: 66.7% (2 of 3" in text
    assert "unreadable inputs: 1" in text
    assert "5/b.png -> 3 (0.60)" in text
    assert "runs/vit_digits/export" in text and str(csv) in text
    assert "mmkit demo vit" in text and "mmkit label" in text
