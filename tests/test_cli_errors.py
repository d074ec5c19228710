"""Bad input: one clear line on stderr, exit code 2, before any training."""

from __future__ import annotations

import pytest

from tests.pipeline_fixtures import write_sst2
from trimformer.cli import main


@pytest.mark.parametrize("args, fragment", [
    (["--recipe", "nope"], "unknown recipe 'nope'"),
    (["--recipe", "smoke", "finetune.epocs=2"], "unknown key 'finetune.epocs'"),
    (["--recipe", "smoke", "attention.sparsity=1.5"], "attention.sparsity"),
    (["--recipe", "smoke", "oops"], "is not key=value"),
    (["--task", "mnli"], "MNLI"),
    (["--task", "imdb"], "imdb"),
    (["--glue-dir", "/nonexistent/glue"], "/nonexistent/glue"),
    (["--recipe", "smoke", "bench.device=tpu"], "bench.device"),
])
def test_run_input_errors_exit_2(tmp_path, capsys, args, fragment):
    glue_dir = write_sst2(tmp_path / "glue")
    base = ["run", "--output-dir", str(tmp_path / "out"), "--glue-dir", str(glue_dir)]
    assert main(base + args) == 2
    err = capsys.readouterr().err
    assert err.startswith("trimformer: error:") and fragment in err
    assert not (tmp_path / "out" / "stages").exists()  # nothing trained


def test_recipe_file_with_a_mistake(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("finetune: {epochs: 2, learning_rate: 1}\n")
    assert main(["run", "--recipe", str(recipe), "--output-dir", str(tmp_path / "o"),
                 "--glue-dir", str(write_sst2(tmp_path / "g"))]) == 2
    assert "finetune.learning_rate" in capsys.readouterr().err


def test_non_empty_output_dir_needs_resume(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "something").write_text("x")
    assert main(["run", "--output-dir", str(out), "--glue-dir", str(write_sst2(tmp_path / "g"))]) == 2
    assert "--resume" in capsys.readouterr().err


def test_bad_flag_value_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--seed", "abc"])
    assert exc.value.code == 2


def test_eval_and_bench_on_missing_model(tmp_path, capsys):
    assert main(["bench", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "missing"), "--task", "sst2"]) == 2


@pytest.mark.parametrize("flag", ["--passes", "--repeats", "--batch-size"])
def test_bench_with_a_count_below_one_exits_2(tmp_path, capsys, flag):
    assert main(["bench", str(tmp_path / "missing"), flag, "0"]) == 2
    assert f"{flag} must be at least 1, got 0" in capsys.readouterr().err  # before the model is looked for


def test_timing_on_a_missing_gpu_exits_2_before_training(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    glue_dir = write_sst2(tmp_path / "glue")
    out = tmp_path / "out"
    assert main(["run", "--output-dir", str(out), "--glue-dir", str(glue_dir), "--recipe", "smoke",
                 "bench.device=cuda"]) == 2
    assert "bench.device=cuda" in capsys.readouterr().err and not (out / "stages").exists()
    assert main(["bench", str(tmp_path / "any"), "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err  # not the missing model: the device comes first
