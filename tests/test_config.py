"""Config lists: selection semantics and one clear error per mistake."""

from __future__ import annotations

import pytest

from tests.models import tiny_bert
from trimformer import ConfigError, select_targets

L0 = "bert.encoder.layer.0."


def names(targets):
    return [t.name for t in targets]


def test_op_types_selects_all_linears():
    model = tiny_bert()
    targets = select_targets(model, [{"op_types": ["Linear"], "sparsity": 0.5}])
    assert len(targets) == 2 * 6 + 2  # 6 per layer + pooler + classifier
    assert all(t.sparsity == 0.5 for t in targets)


def test_partial_names_and_exclude_and_regex():
    model = tiny_bert()
    targets = select_targets(model, [
        {"op_types": ["Linear"], "op_partial_names": [f"bert.encoder.layer.{i}.attention" for i in range(2)],
         "sparsity": 0.1},
        {"exclude": True, "op_names_re": [r"bert\.encoder\.layer\.1\..*"]},
    ])
    assert names(targets) == [L0 + s for s in ("attention.self.query", "attention.self.key",
                                                "attention.self.value", "attention.output.dense")]


def test_total_sparsity_groups_targets():
    model = tiny_bert()
    targets = select_targets(model, [{"op_names_re": [r".*intermediate\.dense"], "total_sparsity": 0.3,
                                      "max_sparsity_per_layer": 0.6}])
    assert {t.group for t in targets} == {0} and all(t.sparsity is None for t in targets)
    assert targets[0].total_sparsity == 0.3 and targets[0].max_sparsity == 0.6


@pytest.mark.parametrize("config, fragment", [
    ([{"op_types": ["Linear"], "sparsity": 0.5, "sparsty": 0.1}], "unknown key 'sparsty'"),
    ([{"op_names": [L0 + "attention.self.quer"], "sparsity": 0.5}], "'bert.encoder.layer.0.attention.self.quer'"),
    ([{"op_partial_names": ["decoder.layer"], "sparsity": 0.5}], "'decoder.layer' matches no module"),
    ([{"op_names_re": [r"foo\..*"], "sparsity": 0.5}], "matches no module"),
    ([{"op_names_re": ["(unclosed"], "sparsity": 0.5}], "is not a regex"),
    ([{"op_types": ["Linear"], "sparsity": 1.0}], "sparsity: Value error, must be in [0, 1)"),
    ([{"op_types": ["Linear"], "sparsity": -0.1}], "must be in [0, 1)"),
    ([{"op_types": ["Embedding"], "sparsity": 0.5}], "cannot be pruned"),
    ([{"op_names": ["bert.embeddings.LayerNorm"], "sparsity": 0.5}], "is a LayerNorm, which cannot be pruned"),
    ([{"op_types": ["Conv2d"], "sparsity": 0.5}], "match no selected module"),
    ([{"op_types": ["Linear"], "sparsity": 0.5, "total_sparsity": 0.5}], "conflicting keys"),
    ([{"exclude": True, "op_types": ["Linear"], "sparsity": 0.5}], "exclude entry cannot also set"),
    ([{"sparsity": 0.5}], "selects nothing"),
    ([{"op_types": ["Linear"], "sparsity": 0.5, "max_sparsity_per_layer": 0.7}], "only applies with total_sparsity"),
    ([{"op_types": ["Linear"], "total_sparsity": 0.5, "max_sparsity_per_layer": 0.2}], "cannot be reached"),
    ([{"op_types": ["Linear"], "sparsity": 0.5},
      {"op_names": [L0 + "intermediate.dense"], "sparsity": 0.2}], "with different settings"),
    ([{"op_types": ["Linear"], "sparsity": 0.5}, {"exclude": True, "op_types": ["Linear"]}], "selects no prunable"),
    ([{"op_types": ["Linear"], "sparsity": 0.5, "granularity": [5, 7]}], None),
    ([], "non-empty list"),
    (["not a dict"], "must be a dict"),
])
def test_bad_configs_raise_one_clear_error(config, fragment):
    model = tiny_bert()
    if fragment is None:  # a block that does not tile the weight fails when the pruner resolves it
        from trimformer import Pruner
        with pytest.raises(ConfigError, match="does not tile"):
            Pruner(model, config)
        return
    with pytest.raises(ValueError) as err:
        select_targets(model, config)
    assert isinstance(err.value, ConfigError)
    assert fragment in str(err.value)
