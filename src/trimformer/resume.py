"""What a resumed run must keep: the settings of every stage it has begun.

`--resume` reloads the recipe from the command line, so it may differ from the one the run began
with (`recipe.json`). A stage not begun yet may take new settings (switch off the final distil,
give the FFN stage more epochs); a stage begun, or done, was trained with the old ones, and a
checkpoint continued with others would mix two trainings under one record. The rows trained on
are checked apart (`holdout.check_rows_record`), the target's shape in `target_stage`.
"""

from __future__ import annotations

import json
from pathlib import Path

from trimformer.config import ConfigError
from trimformer.pipeline import STAGES  # each stage's recipe section has its name
from trimformer.recipe import Recipe

# Keys every stage trains with: once any stage has begun, they are the run's.
SHARED_KEYS = ("max_seq_length", "train_batch_size", "seed", "distill_regression")


def changed_settings(began: dict, now: dict, begun_stages: list[str]) -> list[str]:
    """The dotted keys whose values differ between two recipe dumps, for the begun stages' sections
    and, once any stage has begun, the keys shared by all stages."""
    changed = [key for key in SHARED_KEYS if begun_stages and key in began and began[key] != now.get(key)]
    for stage in begun_stages:
        old, new = began.get(stage, {}), now.get(stage, {})
        changed += [f"{stage}.{key}" for key in sorted(set(old) | set(new))
                    if key in old and old.get(key) != new.get(key)]
    return changed


def check_resumed_recipe(out: Path, recipe: Recipe) -> None:
    """ConfigError naming the settings a resume changes for stages `out` has begun (their folders
    exist); nothing for a new run or a run without `recipe.json`."""
    saved = out / "recipe.json"
    if not saved.is_file():
        return
    begun = [stage for stage in STAGES if (out / "stages" / stage).is_dir()]
    changed = changed_settings(json.loads(saved.read_text()), recipe.model_dump(mode="json"), begun)
    if changed:
        raise ConfigError(f"{out} began its {', '.join(begun)} stage(s) with other settings than this resume "
                          f"gives for {', '.join(changed)} (recipe.json has the run's): resume with those, or "
                          "start a new --output-dir")
