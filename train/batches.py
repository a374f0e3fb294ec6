"""The order of the examples and how they are grouped into batches, as a plan of steps.

The plan is a pure function of the examples, the seed and the batch settings, so a resumed
run replays exactly the same batches: it skips the steps already done.

The order of each epoch (``order``):

- ``shuffled`` (default): a seeded permutation, a new one each epoch;
- ``as_given``: the records in the order of the data files, every epoch;
- ``by_length``: shortest first (a length curriculum; batches of like lengths pad little);
- ``by_source``: one data source after another, in the order given (a record's source is the
  file it was first read from, ``meta.source.file``), shuffled within each source;
- ``curriculum:KEY``: ascending ``meta[KEY]`` (a difficulty or quality score), easiest first.

Ties are broken by the epoch's seeded permutation, so every order is reproducible from the seed.

- Unpacked: each row is one record, padded to the longest row of its micro-batch.
- Packed: records are laid end to end into rows of at most ``max_length`` tokens, in the
  shuffled order (a record that does not fit starts a new row). Position ids restart at 0
  for every record and no attention mask is passed, so transformers builds a block-diagonal
  causal mask from the position ids: a record never attends to its neighbours (the
  padding-free path of ``DataCollatorWithFlattening``, here also on CPU with SDPA).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from train.labels import IGNORE, Example


@dataclass
class MicroBatch:
    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor | None  # None when packed: the position ids carry the boundaries
    position_ids: torch.Tensor | None
    records: int
    real: torch.Tensor  # which positions hold record tokens (not padding)

    @property
    def trained_tokens(self) -> int:
        return int((self.labels[:, 1:] != IGNORE).sum())

    @property
    def tokens(self) -> int:
        return int(self.real.sum())


ORDERS = ("shuffled", "as_given", "by_length", "by_source", "curriculum:KEY")


@dataclass
class Ordering:
    """How each epoch orders the examples (see the module docstring)."""

    kind: str = "shuffled"  # shuffled | as_given | by_length | by_source | curriculum
    sources: list[int] | None = None  # by_source: each example's source number, in the order given
    keys: list[float] | None = None  # curriculum: each example's meta[KEY]


def epoch_order(examples: list[Example], seed: int, epoch: int, ordering: Ordering | None = None) -> list[int]:
    """The example indices of one epoch, in training order."""
    ordering = ordering or Ordering()
    shuffled = np.random.default_rng([seed, epoch]).permutation(len(examples))
    if ordering.kind == "shuffled":
        return shuffled.tolist()
    if ordering.kind == "as_given":
        return list(range(len(examples)))
    if ordering.kind == "by_length":
        key = np.array([len(ex.input_ids) for ex in examples])
    elif ordering.kind == "by_source":
        key = np.asarray(ordering.sources)
    else:
        key = np.asarray(ordering.keys, dtype=np.float64)
    return shuffled[np.argsort(key[shuffled], kind="stable")].tolist()


def pack_rows(examples: list[Example], order: list[int], max_length: int, window: int = 64) -> list[list[int]]:
    """Rows of example indices whose lengths sum to at most max_length.

    First fit over the last ``window`` open rows: a record goes into the first recent row with
    room, else starts a new one. Rows fill to about 95% instead of the ~80% of filling only the
    newest row, and records stay near their shuffled position.
    """
    rows: list[list[int]] = []
    room: list[int] = []  # free tokens of each row
    for i in order:
        size = len(examples[i].input_ids)
        for r in range(max(0, len(rows) - window), len(rows)):
            if room[r] >= size:
                rows[r].append(i)
                room[r] -= size
                break
        else:
            rows.append([i])
            room.append(max_length - size)
    return rows


def plan_steps(examples: list[Example], *, batch_size: int, grad_accum: int, seed: int, packing: bool,
               max_length: int, epochs: float, max_steps: int | None,
               ordering: Ordering | None = None) -> tuple[int, Iterator[list[list[list[int]]]]]:  # fmt: skip
    """(total optimizer steps, steps): each step is micro-batches, each a list of rows of example indices."""
    if not examples:
        raise ValueError("no example to train on")

    def epoch_rows(epoch: int) -> list[list[int]]:
        order = epoch_order(examples, seed, epoch, ordering)
        return pack_rows(examples, order, max_length) if packing else [[i] for i in order]

    rows_per_epoch = len(epoch_rows(0))
    micro_per_epoch = math.ceil(rows_per_epoch / batch_size)
    steps_per_epoch = math.ceil(micro_per_epoch / grad_accum)
    total = max_steps if max_steps is not None else max(1, math.ceil(epochs * steps_per_epoch))

    def steps() -> Iterator[list[list[list[int]]]]:
        done, epoch = 0, 0
        while True:
            rows = epoch_rows(epoch)
            micro = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
            for s in range(0, len(micro), grad_accum):
                yield micro[s : s + grad_accum]
                done += 1
                if done == total:
                    return
            epoch += 1

    return total, steps()


def collate(examples: list[Example], rows: list[list[int]], pad_id: int, packing: bool) -> MicroBatch:
    """Tensors for one micro-batch, right-padded to its longest row."""
    ids_rows, label_rows, pos_rows = [], [], []
    for row in rows:
        ids, labels, pos = [], [], []
        for i in row:
            ex = examples[i]
            ids += ex.input_ids
            # a record's first token is never a target: it cannot be predicted from the record before it
            labels += [IGNORE, *ex.labels[1:]]
            pos += range(len(ex.input_ids))
        ids_rows.append(ids)
        label_rows.append(labels)
        pos_rows.append(pos)
    width = max(len(r) for r in ids_rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    real = torch.zeros((len(rows), width), dtype=torch.bool)
    # padding is its own block (positions from 0), so it attends to nothing of the records
    position_ids = torch.arange(width).repeat(len(rows), 1)
    for r, (ids, lab, pos) in enumerate(zip(ids_rows, label_rows, pos_rows, strict=True)):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        labels[r, : len(lab)] = torch.tensor(lab)
        real[r, : len(ids)] = True
        position_ids[r, : len(pos)] = torch.tensor(pos)
        position_ids[r, len(pos) :] = torch.arange(width - len(pos))
    records = sum(len(row) for row in rows)
    if packing:
        return MicroBatch(input_ids, labels, None, position_ids, records, real)
    return MicroBatch(input_ids, labels, real.long(), None, records, real)
