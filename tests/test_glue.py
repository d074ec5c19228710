"""GLUE tasks: parsing every task's original layout, real dev files, errors, metrics, tokenisation."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from trimformer.glue import (
    TASKS,
    Example,
    GlueDataError,
    GlueDataset,
    check_task_files,
    combine_splits,
    compute_metrics,
    encode,
    get_task,
    load_split,
    load_split_from_hub,
    make_collator,
    resolve_glue_dir,
)

REAL_GLUE = Path(__file__).resolve().parents[1] / ".." / "shared" / "glue"
Q = 'He said " hi'  # an unbalanced quote: only QUOTE_NONE reads it as written


def _tsv(path: Path, rows: list[list[str]], bom: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join("\t".join(r) for r in rows) + "\n"
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")


# Per task: split -> rows in the original GLUE layout; and the examples they must parse to.
MNLI_HEAD = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
             "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"]


def _mnli(n: int, s1: str, s2: str, gold: str) -> list[str]:
    return [str(n), "1", "1e", "fiction", "( x )", "( y )", "(S x)", "(S y)", s1, s2, gold, gold]


FILES = {
    "cola": {s: [["gj04", "1", "", Q], ["gj04", "0", "*", "Bad the."]] for s in ("train", "dev")},
    "sst2": {s: [["sentence", "label"], [Q, "1"], ["dull .", "0"]] for s in ("train", "dev")},
    "mrpc": {s: [["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"], ["1", "1", "2", Q, "b"],
                 ["0", "3", "4", "c", "d"]] for s in ("train", "dev")},
    "stsb": {s: [["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1",
                  "sentence2", "score"], ["0", "g", "f", "2012", "0", "n", "n", Q, "b", "4.750"],
                 ["1", "g", "f", "2012", "1", "n", "n", "c", "d", "0.000"]] for s in ("train", "dev")},
    "qqp": {s: [["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
                ["0", "1", "2", Q, "b", "1"], ["1", "3", "4", "c", "d", "0"]] for s in ("train", "dev")},
    "mnli": {s: [MNLI_HEAD, _mnli(0, Q, "b", "entailment"), _mnli(1, "c", "d", "neutral"),
                 _mnli(2, "e", "f", "contradiction")] for s in ("train", "dev_matched", "dev_mismatched")},
    "qnli": {s: [["index", "question", "sentence", "label"], ["0", Q, "b", "entailment"],
                 ["1", "c", "d", "not_entailment"]] for s in ("train", "dev")},
    "rte": {s: [["index", "sentence1", "sentence2", "label"], ["0", Q, "b", "entailment"],
                ["1", "c", "d", "not_entailment"]] for s in ("train", "dev")},
    "wnli": {s: [["index", "sentence1", "sentence2", "label"], ["0", Q, "b", "1"], ["1", "c", "d", "0"]]
             for s in ("train", "dev")},
}
EXPECTED = {
    "cola": [Example(Q, None, 1), Example("Bad the.", None, 0)],
    "sst2": [Example(Q, None, 1), Example("dull .", None, 0)],
    "mrpc": [Example(Q, "b", 1), Example("c", "d", 0)],
    "stsb": [Example(Q, "b", 4.75), Example("c", "d", 0.0)],
    "qqp": [Example(Q, "b", 1), Example("c", "d", 0)],
    "mnli": [Example(Q, "b", 0), Example("c", "d", 1), Example("e", "f", 2)],
    "qnli": [Example(Q, "b", 0), Example("c", "d", 1)],
    "rte": [Example(Q, "b", 0), Example("c", "d", 1)],
    "wnli": [Example(Q, "b", 1), Example("c", "d", 0)],
}


@pytest.fixture
def glue_dir(tmp_path: Path) -> Path:
    for name, splits in FILES.items():
        for split, rows in splits.items():
            _tsv(tmp_path / TASKS[name].folder / f"{split}.tsv", rows, bom=name == "mrpc")
    return tmp_path


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_parses_original_layout(glue_dir: Path, name: str) -> None:
    spec = get_task(name)
    check_task_files(name, glue_dir)
    for split in spec.splits:
        examples = load_split(name, split, glue_dir)
        assert examples == EXPECTED[name]
        for ex in examples:
            assert isinstance(ex.label, float if spec.is_regression else int)
    assert load_split(spec, "train", glue_dir, max_samples=1) == EXPECTED[name][:1]


def test_task_specs() -> None:
    assert get_task("SST-2") is get_task("sst2") is get_task("sst-2") is TASKS["sst2"]
    assert get_task("STS-B").name == "stsb" and get_task("CoLA").folder == "CoLA"
    stsb, mnli = get_task("stsb"), get_task("MNLI")
    assert stsb.is_regression and stsb.num_labels == 1 and stsb.labels is None
    assert mnli.num_labels == 3 and mnli.dev_splits == ("dev_matched", "dev_mismatched")
    assert {n: t.main_metric for n, t in TASKS.items()} == {
        "cola": "matthews_correlation", "sst2": "accuracy", "mrpc": "f1", "stsb": "pearson", "qqp": "f1",
        "mnli": "default", "qnli": "accuracy", "rte": "accuracy", "wnli": "accuracy"}
    assert [t.folder for t in TASKS.values()] == ["CoLA", "SST-2", "MRPC", "STS-B", "QQP", "MNLI", "QNLI",
                                                 "RTE", "WNLI"]
    with pytest.raises(GlueDataError, match="unknown GLUE task 'squad'.*cola, sst2"):
        get_task("squad")


def test_resolve_glue_dir(glue_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_glue_dir(str(glue_dir)) == glue_dir
    monkeypatch.setenv("GLUE_DIR", str(glue_dir))
    assert resolve_glue_dir(None) == glue_dir
    monkeypatch.delenv("GLUE_DIR")
    work = tmp_path / "work" / "main"
    (tmp_path / "work" / "shared" / "glue").mkdir(parents=True)
    work.mkdir()
    monkeypatch.chdir(work)
    assert resolve_glue_dir(None).resolve() == (tmp_path / "work" / "shared" / "glue").resolve()
    with pytest.raises(GlueDataError, match=r"GLUE folder .*nowhere.* does not exist.*GLUE_DIR"):
        resolve_glue_dir(tmp_path / "nowhere")


def test_missing_file_and_split_errors(glue_dir: Path) -> None:
    (glue_dir / "RTE" / "dev.tsv").unlink()
    with pytest.raises(GlueDataError, match=r"rte: dev file .*RTE/dev\.tsv not found"):
        load_split("rte", "dev", glue_dir)
    with pytest.raises(GlueDataError, match=r"missing GLUE file\(s\): .*RTE/dev\.tsv"):
        check_task_files("rte", glue_dir)
    with pytest.raises(GlueDataError, match="no labelled split 'test'"):
        load_split("sst2", "test", glue_dir)
    with pytest.raises(GlueDataError, match="no labelled split 'dev'.*dev_matched"):
        load_split("mnli", "dev", glue_dir)


@pytest.mark.parametrize(("name", "row", "message"), [
    ("rte", ["2", "e", "f", "maybe"], r"RTE/train\.tsv:4: label 'maybe' is not one of"),
    ("stsb", ["2", "g", "f", "2012", "2", "n", "n", "e", "f", "high"], r"STS-B/train\.tsv:4: score 'high'"),
    ("sst2", ["a\tstray tab", "1"], r"SST-2/train\.tsv:4: expected 2 tab-separated fields, got 3"),
    ("cola", ["gj04", "2", "", "x"], r"CoLA/train\.tsv:3: label '2'"),
])
def test_bad_rows_name_file_and_line(glue_dir: Path, name: str, row: list[str], message: str) -> None:
    path = glue_dir / TASKS[name].folder / "train.tsv"
    _tsv(path, FILES[name]["train"] + [row])
    with pytest.raises(GlueDataError, match=message):
        load_split(name, "train", glue_dir)


def test_bad_header(glue_dir: Path) -> None:
    rows = [["index", "question", "text", "label"], ["0", "a", "b", "entailment"]]
    _tsv(glue_dir / "QNLI" / "dev.tsv", rows)
    with pytest.raises(GlueDataError, match=r"QNLI/dev\.tsv: header lacks column\(s\) \['sentence'\]"):
        load_split("qnli", "dev", glue_dir)
    (glue_dir / "QNLI" / "dev.tsv").write_text("")
    with pytest.raises(GlueDataError, match="file is empty"):
        load_split("qnli", "dev", glue_dir)


needs_real = pytest.mark.skipif(not REAL_GLUE.is_dir(), reason="../shared/glue is not on this machine")


@needs_real
@pytest.mark.parametrize(("name", "rows"), [("sst2", 872), ("rte", 277), ("cola", 1043), ("mrpc", 408),
                                            ("stsb", 1500)])
def test_real_dev_files(name: str, rows: int) -> None:
    examples = load_split(name, "dev", REAL_GLUE)
    assert len(examples) == rows
    spec = get_task(name)
    if spec.is_regression:
        assert all(0.0 <= e.label <= 5.0 for e in examples) and examples[0].label == 5.0
    else:
        assert {e.label for e in examples} == set(range(spec.num_labels))
    assert all(e.text_a and (e.text_b is not None) == spec.is_pair for e in examples)


@needs_real
def test_real_mrpc_bom_and_qnli_missing_train() -> None:
    first = load_split("mrpc", "dev", REAL_GLUE, max_samples=1)[0]
    assert first.label == 1 and first.text_a.startswith("He said the foodservice pie business")
    with pytest.raises(GlueDataError, match=r"QNLI/train\.tsv"):
        check_task_files("qnli", REAL_GLUE)


def test_metrics_hand_computed() -> None:
    labels = np.array([1, 1, 0, 0])
    logits = np.array([[0.0, 1.0], [2.0, 1.0], [3.0, -1.0], [0.5, 0.0]])  # argmax -> 1, 0, 0, 0
    # TP=1 FN=1 TN=2 FP=0: mcc = (1*2 - 0*1) / sqrt(1*2*2*3); f1 = 2 * 1 * 0.5 / 1.5.
    cola = compute_metrics("cola", logits, labels)
    assert cola == pytest.approx({"matthews_correlation": 2 / math.sqrt(12), "accuracy": 0.75})
    assert compute_metrics("MRPC", logits, labels) == pytest.approx({"f1": 2 / 3, "accuracy": 0.75})
    assert compute_metrics("rte", np.array([1, 0, 0, 0]), labels) == {"accuracy": 0.75}
    # pearson([1,2,3,4], [1,2,3,5]) = 6.5 / sqrt(5 * 8.75); the ranks agree, so spearman = 1.
    stsb = compute_metrics("stsb", np.array([[1.0], [2.0], [3.0], [4.0]]), np.array([1.0, 2.0, 3.0, 5.0]))
    assert stsb == pytest.approx({"pearson": 6.5 / math.sqrt(43.75), "spearmanr": 1.0})
    assert compute_metrics("stsb", np.ones(4), np.arange(4.0)) == {"pearson": 0.0, "spearmanr": 0.0}
    with pytest.raises(ValueError, match="3 predictions for 4 labels"):
        compute_metrics("sst2", logits[:3], labels)


def test_combine_splits() -> None:
    single = {"matthews_correlation": 0.5, "accuracy": 0.8}
    assert combine_splits("cola", {"dev": single}) == single
    mnli = combine_splits("mnli", {"dev_matched": {"accuracy": 0.8}, "dev_mismatched": {"accuracy": 0.7}})
    assert mnli == pytest.approx({"matched_accuracy": 0.8, "mismatched_accuracy": 0.7, "accuracy": 0.75,
                                  "default": 0.75})
    with pytest.raises(ValueError, match="dev_mismatched"):
        combine_splits("mnli", {"dev_matched": {"accuracy": 0.8}})


def test_hub_loader_needs_datasets() -> None:
    if importlib.util.find_spec("datasets") is not None:
        pytest.skip("datasets is installed; the hub itself is never called in tests")
    with pytest.raises(ImportError, match="'datasets' package"):
        load_split_from_hub("sst2", "dev")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from tests.models import minilm_path

    return AutoTokenizer.from_pretrained(minilm_path())


def test_encode_truncates_and_labels(tokenizer) -> None:
    long = " ".join(["word"] * 50)
    feats = encode(tokenizer, "sst2", [Example(long, None, 1), Example("fine .", None, 0)], max_length=8)
    assert len(feats[0]["input_ids"]) == 8 and feats[0]["input_ids"][-1] == tokenizer.sep_token_id
    assert len(feats[1]["input_ids"]) == 4  # [CLS] fine . [SEP]: no padding here
    assert feats[0]["labels"] == 1 and isinstance(feats[0]["labels"], int)
    assert set(feats[0]) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    pair = encode(tokenizer, "stsb", [Example(long, long, 3)], max_length=12)[0]
    assert len(pair["input_ids"]) == 12 and pair["labels"] == 3.0 and isinstance(pair["labels"], float)
    assert 1 in pair["token_type_ids"]  # the second sentence survives truncation
    with pytest.raises(GlueDataError, match="no text_b"):
        encode(tokenizer, "rte", [Example("a", None, 0)])


def test_collator_pads_and_stacks_teacher_logits(tokenizer) -> None:
    examples = [Example("a b c d e f g", "h", 1), Example("short", "x", 0), Example("mid dle text", "y", 1)]
    feats = encode(tokenizer, "rte", examples)
    lengths = [len(f["input_ids"]) for f in feats]
    teacher = torch.arange(6, dtype=torch.float32).reshape(3, 2)
    dataset = GlueDataset(feats).with_teacher_logits(teacher)
    assert "teacher_logits" not in GlueDataset(feats)[0]
    batch = make_collator(tokenizer)([dataset[i] for i in range(3)])
    assert batch["input_ids"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["input_ids"][1, lengths[1]:].eq(tokenizer.pad_token_id).all()
    assert batch["labels"].tolist() == [1, 0, 1] and batch["labels"].dtype == torch.long
    assert torch.equal(batch["teacher_logits"], teacher)
    assert batch["token_type_ids"].shape == (3, max(lengths))
    # Plain float lists stack too; regression labels come out float32.
    plain = [dict(f, labels=float(f["labels"]), teacher_logits=[0.5]) for f in feats[:2]]
    batch = make_collator(tokenizer)(plain)
    assert batch["teacher_logits"].shape == (2, 1) and batch["labels"].dtype == torch.float32
    with pytest.raises(ValueError, match=r"teacher_logits must be \[3, num_labels\]"):
        dataset.with_teacher_logits(torch.zeros(2, 2))
