"""The frontier's comparison with the tutorial, table and plot (bench/frontier_report.py)."""

from __future__ import annotations

import json

import pytest

from tests.bench_scripts import load_bench

frontier = load_bench("frontier_report")

TUTORIAL = [(2.6, 6.0), (3.4, 8.8), (4.5, 23.5)]


def test_interpolates_inside_the_tutorial_sweep():
    assert frontier.interpolate(TUTORIAL, 3.0) == pytest.approx(7.4)
    assert frontier.versus_tutorial({"speedup": 3.0, "drop": 7.0}, TUTORIAL) == (pytest.approx(7.4), True)
    assert frontier.versus_tutorial({"speedup": 3.0, "drop": 7.5}, TUTORIAL)[1] is False


def test_outside_the_sweep_only_domination_counts():
    assert frontier.interpolate(TUTORIAL, 4.7) is None
    assert frontier.versus_tutorial({"speedup": 4.7, "drop": 7.7}, TUTORIAL) == (None, True)  # faster, better
    assert frontier.versus_tutorial({"speedup": 2.1, "drop": 6.5}, TUTORIAL) == (None, False)  # x2.6 at 6.0
    assert frontier.versus_tutorial({"speedup": 2.1, "drop": 5.0}, TUTORIAL) == (None, None)


def test_comparison_table_and_goal_check():
    rows = [{"task": "stsb", "method": "tutorial", "sweep": {"regular_scale": float(i)}, "speedup": s, "drop": d}
            for i, (s, d) in enumerate(TUTORIAL)]
    rows.append({"task": "stsb", "method": "trimformer", "sweep": {"target_speedup": 3.0}, "speedup": 3.0, "drop": 1.0})
    text = "\n".join(frontier.comparison_lines(rows))
    assert "| trimformer | x3 | stsb | 3.00x | +1.00 | +7.40 | yes |" in text
    assert "| trimformer | x3 | 1 | 3.00x | +1.00 | <= 1.5 | met | 1 of 1 |" in text
    # With a second task in the results, a target run on one task only is not judged against the goal.
    rows.append({"task": "rte", "method": "other", "sweep": {"target_speedup": 3.0}, "speedup": 3.0, "drop": 9.0})
    text = "\n".join(frontier.comparison_lines(rows))
    assert "| trimformer | x3 | 1 | 3.00x | +1.00 | <= 1.5 | partial (1 of 2 tasks) | 1 of 1 |" in text


def test_summary_writes_table_and_plot(tmp_path):
    row = {"main_metric": "accuracy", "dense_metric": 0.9, "total_sparsity": 0.5, "flops_ratio": 2.0,
           "trained_on": "GPU X"}
    points = [("sst2", "tutorial", {"regular_scale": 0.0}, 2.5, 3.0), ("sst2", "tutorial", {"regular_scale": 5.0},
                                                                          30.0, 40.0),
              ("sst2", "trimformer", {"target_speedup": 2.0}, 2.0, 1.0), ("rte", "trimformer",
                                                                           {"target_speedup": 2.0}, 2.1, 2.0)]
    for i, (task, method, sweep, speedup, drop) in enumerate(points):
        data = {**row, "task": task, "method": method, "sweep": sweep, "speedup": speedup, "drop": drop,
                "pruned_metric": 0.9 - drop / 100}
        (tmp_path / f"{i}.json").write_text(json.dumps(data))
    # A branch row (bench/branch.py) beside the points is not a point: no method, not in the table.
    (tmp_path / "sst2-trimformer-2+alt.json").write_text(json.dumps({**row, "task": "sst2", "point": "trimformer-2",
                                                                      "branch": "alt", "drop": 9.0}))
    frontier.write_summary(tmp_path, "Protocol.")
    text = (tmp_path / "frontier.md").read_text()
    assert "Protocol. Trained on: GPU X." in text
    assert "| sst2 | tutorial | regular_scale=5 | 0.9000 | 0.5000 | +40.00 | 30.00x |" in text
    assert "| trimformer | x2 | sst2 | 2.00x | +1.00 | n/a | n/a |" in text  # faster than none, better than all
    assert (tmp_path / "frontier.png").stat().st_size > 10_000
    assert "+9.00" not in text


def test_summary_of_no_points_writes_nothing(tmp_path):
    """A sweep stopped after its fine-tunes has no point yet (the GPU driver's first calls)."""
    frontier.write_summary(tmp_path, "Protocol.")
    assert not (tmp_path / "frontier.md").exists() and not (tmp_path / "frontier.png").exists()


def test_mean_points_only_count_targets_run_on_every_task():
    """The mean panel and the goal are judged on all tasks; a target with a task missing is left out."""
    rows = [{"sweep": {"target_speedup": 2.0}, "speedup": 2.0, "drop": 1.0},
            {"sweep": {"target_speedup": 2.0}, "speedup": 2.2, "drop": 3.0},
            {"sweep": {"target_speedup": 3.0}, "speedup": 3.1, "drop": 5.0}]
    assert frontier.mean_points(rows, 2) == [(pytest.approx(2.1), 2.0)]
    assert frontier.mean_points(rows, 1) == [(3.1, 5.0)]


def test_seed_variants_are_averaged_per_target():
    """`M` and `M_s1025` are one method at two seeds: the table averages their five-task means."""
    def row(method, task, target, drop):
        return {"method": method, "task": task, "sweep": {"target_speedup": target}, "speedup": target, "drop": drop}

    rows = [row("m", "a", 2.0, 1.0), row("m", "b", 2.0, 3.0), row("m_s1025", "a", 2.0, 5.0),
            row("m_s1025", "b", 2.0, 7.0), row("m_s1025", "a", 3.0, 9.0), row("other", "a", 2.0, 0.0),
            {"method": "tutorial", "task": "a", "sweep": {"regular_scale": 1.0}, "speedup": 2.0, "drop": 9.0}]
    lines = frontier.seed_lines(rows)
    assert "| m | x2 | 2 | 2.00x | +4.00 | +2.00 to +6.00 |" in lines
    assert not any(line.startswith("| m | x3") or line.startswith("| other") for line in lines)
    assert frontier.seed_lines([r for r in rows if r["method"] != "m_s1025"]) == []


def test_points_trained_elsewhere_are_timed_from_their_recorded_widths(tmp_path):
    """`--remeasure` times a point whose folder is not here from another point's config of the same
    task with the row's own heads and FFN widths; with no config of that task it skips the point."""
    from trimformer.io import build_architecture

    donor = tmp_path / "work" / "cola" / "taylor-3" / "model"
    donor.mkdir(parents=True)
    config = {"model_type": "bert", "architectures": ["BertForSequenceClassification"], "hidden_size": 32,
              "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64, "vocab_size": 50,
              "trimformer_heads_per_layer": [1, 1], "trimformer_ffn_per_layer": [8, 8]}
    (donor / "config.json").write_text(json.dumps(config))
    row = {"task": "cola", "method": "tutorial", "sweep": {"regular_scale": 1.0},
           "heads_per_layer": [0, 3], "ffn_per_layer": [1, 40]}
    folder = frontier.shape_folder(tmp_path / "work", row, tmp_path / "scratch")
    model = build_architecture(folder)
    layers = model.bert.encoder.layer
    assert [layer.intermediate.dense.out_features for layer in layers] == [1, 40]
    assert layers[1].attention.output.dense.in_features == 3 * 8
    own = {"task": "cola", "method": "taylor", "sweep": {"target_speedup": 3.0}}
    assert frontier.shape_folder(tmp_path / "work", own, tmp_path / "unused") == donor
    assert frontier.shape_folder(tmp_path / "work", {**row, "task": "rte"}, tmp_path / "none") is None


def test_every_remeasure_pass_is_kept_and_the_median_used():
    row = {"speedup": 2.7}  # as trained: the figure taken at the end of the run
    frontier.add_timing(row, 3.0, 15)
    assert row["speedup_at_run"] == 2.7 and row["speedup_timings"] == [3.0] and row["speedup"] == 3.0
    frontier.add_timing(row, 2.6, 15)
    frontier.add_timing(row, 3.1, 15)
    assert row["speedup_timings"] == [3.0, 2.6, 3.1] and row["speedup"] == 3.0 and row["speedup_at_run"] == 2.7
    earlier = {"speedup": 2.8, "speedup_at_run": 2.1}  # re-timed once before passes were kept
    frontier.add_timing(earlier, 3.2, 15)
    assert earlier["speedup_timings"] == [2.8, 3.2] and earlier["speedup"] == pytest.approx(3.0)


def test_timing_spread_over_passes():
    rows = [{"speedup": 3.0, "speedup_timings": [2.7, 3.0, 3.3]}, {"speedup": 2.0, "speedup_timings": [2.0, 2.0]},
            {"speedup": 20.0, "speedup_timings": [10.0, 30.0]}, {"speedup": 5.0}]
    text = "\n".join(frontier.timing_lines(rows))
    assert "2 points up to x8 re-timed in 2/3 quiet passes" in text
    assert "10.0% at most" in text
    assert frontier.timing_lines([{"speedup": 5.0}]) == []
