"""The evaluation summary (dataseg.engine.evaluation): hand-built evaluator results in, the exact
rows, table, eval_summary.json and eval_summary.md out, with several datasets, a metric that is
NaN, metrics an evaluator did not report, and images skipped as bad records."""
import json
import math
from collections import OrderedDict

import pytest

import dataseg  # noqa: F401  (registers the synth_* datasets the results are keyed by)
from dataseg.engine.evaluation import (
    format_summary,
    missing_metrics,
    summarize_results,
    write_summary,
)

NAN = float("nan")


def _results():
    # the groups Detectron2's evaluators return, with extra metrics the summary leaves out
    return OrderedDict([
        ("synth_pan_val", {"panoptic_seg": {"PQ": 12.3456, "SQ": 70.0, "PQ_th": 10.0,
                                            "PQ_st": NAN},
                           "images": {"evaluated": 3, "skipped": 1, "total": 4}}),
        ("synth_sem_val", {"sem_seg": {"mIoU": 45.678, "fwIoU": 50.0, "pACC": 60.0}}),
        ("synth_box_val_instance", {"bbox": {"AP": 30.0, "AP50": 55.5}}),  # no "segm" group
        ("synth_unseen_sem_val", {}),  # COCOEvaluator-style {}: nothing reported
    ])


ROWS = [
    {"dataset": "synth_pan_val", "task": "panoptic", "metric": "panoptic_seg/PQ",
     "value": 12.3456},
    {"dataset": "synth_pan_val", "task": "panoptic", "metric": "panoptic_seg/PQ_th",
     "value": 10.0},
    {"dataset": "synth_pan_val", "task": "panoptic", "metric": "panoptic_seg/PQ_st",
     "value": NAN},
    {"dataset": "synth_sem_val", "task": "semantic", "metric": "sem_seg/mIoU", "value": 45.678},
    {"dataset": "synth_box_val_instance", "task": "instance", "metric": "bbox/AP",
     "value": 30.0},
]
MISSING = [
    {"dataset": "synth_box_val_instance", "task": "instance", "metric": "segm/AP"},
    {"dataset": "synth_unseen_sem_val", "task": "semantic", "metric": "sem_seg/mIoU"},
]
TABLE = """\
| dataset | task | metric | value |
|---|---|---|---|
| synth_pan_val | panoptic | panoptic_seg/PQ | 12.35 |
| synth_pan_val | panoptic | panoptic_seg/PQ_th | 10.00 |
| synth_pan_val | panoptic | panoptic_seg/PQ_st | nan |
| synth_sem_val | semantic | sem_seg/mIoU | 45.68 |
| synth_box_val_instance | instance | bbox/AP | 30.00 |
| synth_box_val_instance | instance | segm/AP | not reported |
| synth_unseen_sem_val | semantic | sem_seg/mIoU | not reported |

synth_pan_val: evaluated 3 of 4 images (1 skipped as bad records)"""


def _same_rows(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        assert {k: g[k] for k in g if k != "value"} == {k: w[k] for k in w if k != "value"}
        assert (math.isnan(g["value"]) and math.isnan(w["value"])) or g["value"] == w["value"]


def test_rows_follow_results_and_headline_order():
    _same_rows(summarize_results(_results()), ROWS)
    assert missing_metrics(_results()) == MISSING


def test_table_exactly():
    notes = ["synth_pan_val: evaluated 3 of 4 images (1 skipped as bad records)"]
    assert format_summary(ROWS, MISSING, notes) == TABLE
    assert format_summary([]) == "| dataset | task | metric | value |\n|---|---|---|---|"


def test_write_summary_files(tmp_path):
    rows = write_summary(_results(), str(tmp_path))
    _same_rows(rows, ROWS)
    assert (tmp_path / "eval_summary.md").read_text() == TABLE + "\n"
    text = (tmp_path / "eval_summary.json").read_text()
    assert "NaN" not in text and '"value": null' in text  # strict JSON: NaN written as null
    summary = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    assert list(summary) == ["rows", "missing", "results"]
    _same_rows([dict(r, value=NAN if r["value"] is None else r["value"])
                for r in summary["rows"]], ROWS)
    assert summary["missing"] == MISSING
    results = summary["results"]
    assert list(results) == list(_results())  # every dataset, in order, all groups kept
    assert results["synth_sem_val"] == {"sem_seg": {"mIoU": 45.678, "fwIoU": 50.0,
                                                    "pACC": 60.0}}
    assert results["synth_pan_val"]["images"] == {"evaluated": 3, "skipped": 1, "total": 4}
    assert results["synth_unseen_sem_val"] == {}
    assert not [p for p in tmp_path.iterdir() if p.name not in ("eval_summary.json",
                                                                 "eval_summary.md")]


def test_write_summary_without_output_dir_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = write_summary(OrderedDict([("synth_sem_val", {"sem_seg": {"mIoU": 1.0}})]), "")
    assert [r["value"] for r in rows] == [1.0] and list(tmp_path.iterdir()) == []
