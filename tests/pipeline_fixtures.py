"""A tiny random BERT with the real MiniLM tokenizer, and a tiny SST-2-like GLUE folder."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from tests.models import minilm_path

POSITIVE = ["good", "great", "fun", "lovely", "superb", "moving", "bright", "warm"]
NEGATIVE = ["bad", "dull", "awful", "boring", "weak", "flat", "grim", "tired"]
FILLER = ["the", "film", "was", "a", "story", "and", "acting", "plot", "really", "quite"]


def write_sst2(glue_dir: Path, train_rows: int = 48, dev_rows: int = 16, seed: int = 0) -> Path:
    """SST-2 files in the original layout with a learnable signal (sentiment words)."""
    rng = random.Random(seed)
    folder = glue_dir / "SST-2"
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train_rows), ("dev", dev_rows)):
        lines = ["sentence\tlabel"]
        for _ in range(rows):
            label = rng.randint(0, 1)
            words = rng.sample(FILLER, 4) + [rng.choice(POSITIVE if label else NEGATIVE)]
            rng.shuffle(words)
            lines.append(f"{' '.join(words)}\t{label}")
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return glue_dir


def write_tiny_model(folder: Path, seed: int = 0, dropout: float = 0.1) -> Path:
    """A 2-layer, 4-head random BERT that uses the packaged MiniLM's tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128, num_labels=2,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


TINY_OVERRIDES = [
    "finetune.max_steps=6", "attention.max_steps=8", "distil.max_steps=4", "ffn.max_steps=12", "ffn.rounds=3",
    "final_distil.max_steps=4", "bench.repeats=2", "bench.batch_size=2", "bench.seq_len=16", "checkpoint_every=2",
]


def write_stsb(glue_dir: Path, train_rows: int = 48, dev_rows: int = 16, seed: int = 0) -> Path:
    """STS-B files in the original layout: a score from 0 to 5 that grows with the shared words."""
    rng = random.Random(seed)
    folder = glue_dir / "STS-B"
    folder.mkdir(parents=True, exist_ok=True)
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    for split, rows in (("train", train_rows), ("dev", dev_rows)):
        lines = [header]
        for i in range(rows):
            first = rng.sample(FILLER, 5)
            shared = rng.randint(0, 5)
            second = first[:shared] + rng.sample(POSITIVE, 5 - shared)
            lines.append(f"{i}\tmain-captions\tMSRvid\t2012test\t{i:04d}\tnone\tnone\t{' '.join(first)}\t"
                         f"{' '.join(second)}\t{shared:.3f}")
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return glue_dir
