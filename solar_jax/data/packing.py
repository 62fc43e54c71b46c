"""Packing: documents into fixed-length rows, as a layout computed from lengths alone.

The layout (which slice of which document lands where in which row) needs only the
documents' lengths, so every process computes the same one cheaply, and a row's tokens are
gathered from the stream only when the row is read. That makes rows index-addressable:
row r is a pure function of (stream, layout, r), which grain's MapDataset needs for
shuffling and for resuming at any step with any process count. (grain's own packers are
IterDatasets: sequential, so their state is tied to one iteration order and shard count.)

A row's pieces each become one segment: segment ids 1, 2, ... (0 = padding), positions
restart at 0, and a piece never attends to another. Targets are the next token *of the
same document*, so a document cut into chunks still predicts across the cut; only each
document's last token (and padding) gets loss weight 0.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from solar_jax.data.tokenize import TokenStream


@dataclasses.dataclass(frozen=True)
class PackedLayout:
    """Row r holds pieces row_ptr[r]:row_ptr[r+1], in order.

    start:   [P] int64, stream index of the piece's first token.
    length:  [P] int64, tokens in the piece (1..seq_len).
    doc_end: [P] int64, stream index one past the piece's document (for targets).
    """

    seq_len: int
    row_ptr: np.ndarray
    start: np.ndarray
    length: np.ndarray
    doc_end: np.ndarray

    @property
    def num_rows(self) -> int:
        return len(self.row_ptr) - 1


def pack_greedy(doc_offsets: np.ndarray, order: np.ndarray, seq_len: int) -> PackedLayout:
    """Whole documents, in `order`, fill a row while they fit; then a new row starts.

    A document longer than seq_len is cut into seq_len chunks (each fills a row by itself)
    and a shorter tail, which is packed like any other document.
    """
    offsets = doc_offsets.tolist()  # Python ints: this loop is per document, keep it cheap
    row_ptr, starts, lengths, ends = [0], [], [], []
    fill = 0
    for d in order.tolist():
        s, e = offsets[d], offsets[d + 1]
        while s < e:
            take = min(seq_len, e - s)
            if fill + take > seq_len:
                row_ptr.append(len(starts))
                fill = 0
            starts.append(s)
            lengths.append(take)
            ends.append(e)
            fill += take
            s += take
    if fill:
        row_ptr.append(len(starts))
    arrays = (np.asarray(a, np.int64) for a in (row_ptr, starts, lengths, ends))
    return PackedLayout(seq_len, *arrays)


def pack_concat(doc_offsets: np.ndarray, order: np.ndarray, seq_len: int) -> PackedLayout:
    """Documents, in `order`, laid end to end and cut every seq_len tokens (no padding but
    in the last row). Vectorized: pieces are the gaps between document and row boundaries."""
    lengths = np.diff(doc_offsets)[order]
    packed_start = np.concatenate([[0], np.cumsum(lengths)])  # document starts, packed
    total = int(packed_start[-1])
    bounds = np.union1d(packed_start, np.arange(0, total, seq_len))  # sorted, unique, has total
    piece_begin, piece_len = bounds[:-1], np.diff(bounds)
    k = np.searchsorted(packed_start, piece_begin, side="right") - 1  # position in `order`
    doc = order[k]
    start = doc_offsets[doc] + (piece_begin - packed_start[k])
    rows = -(-total // seq_len)
    row_ptr = np.searchsorted(piece_begin // seq_len, np.arange(rows + 1), side="left")
    return PackedLayout(seq_len, row_ptr.astype(np.int64), start.astype(np.int64),
                        piece_len.astype(np.int64), doc_offsets[doc + 1].astype(np.int64))


PACKERS = {"greedy": pack_greedy, "concat": pack_concat}


def pack_rows(stream: TokenStream, layout: PackedLayout, rows) -> dict[str, np.ndarray]:
    """Packed rows `rows` as [len(rows), seq_len] arrays: input_ids, targets, loss_weights,
    segment_ids, positions. Vectorized over the whole batch (a per-row loop costs ~10x)."""
    rows = np.asarray(rows, np.int64).reshape(-1)
    lo, hi = layout.row_ptr[rows], layout.row_ptr[rows + 1]
    count = hi - lo  # pieces per row; a layout row always has at least one
    base = np.cumsum(count) - count  # index of each row's first piece in the list below
    # Every piece of every requested row, in order, and the batch row it belongs to.
    piece_row = np.repeat(np.arange(len(rows)), count)
    rank = np.arange(int(count.sum())) - base[piece_row]  # 0, 1, ... within its row
    piece = lo[piece_row] + rank
    length = layout.length[piece]
    begin = np.cumsum(length) - length  # where each piece begins in all rows laid end to end
    first = begin - begin[base][piece_row]  # ... and within its own row
    # Per token: its slot in the flat [rows * seq_len] output, its stream index, its target.
    total = int(length.sum())
    position = np.arange(total) - np.repeat(begin, length)
    slot = np.repeat(piece_row * layout.seq_len + first, length) + position
    src = np.repeat(layout.start[piece], length) + position
    nxt = src + 1
    has_next = nxt < np.repeat(layout.doc_end[piece], length)
    nxt = np.where(has_next, nxt, src)  # stay in bounds; these slots are masked anyway

    shape = (len(rows), layout.seq_len)
    out = {name: np.zeros(shape, np.int32)
           for name in ("input_ids", "targets", "segment_ids", "positions")}
    out["loss_weights"] = np.zeros(shape, np.float32)
    weights = has_next if stream.target_mask is None else has_next & stream.target_mask[nxt]
    for name, values in (("input_ids", stream.tokens[src]),
                         ("targets", np.where(has_next, stream.tokens[nxt], 0)),
                         ("segment_ids", np.repeat(rank + 1, length)), ("positions", position),
                         ("loss_weights", weights)):
        out[name].reshape(-1)[slot] = values
    return out


def row_loss_tokens(stream: TokenStream, layout: PackedLayout) -> np.ndarray:
    """[num_rows] int64: the loss weight each packed row carries (what pack_rows would sum),
    from prefix sums alone, without gathering any row. Piece tokens t in [start, b) with
    b = min(start + length, doc_end - 1) have a next token; they count where it is a target."""
    end = np.minimum(layout.start + layout.length, layout.doc_end - 1)
    if stream.target_mask is None:
        counts = np.maximum(end - layout.start, 0)
    else:
        mask_sum = np.concatenate([[0], np.cumsum(stream.target_mask, dtype=np.int64)])
        counts = np.where(end > layout.start, mask_sum[np.maximum(end, layout.start) + 1]
                          - mask_sum[layout.start + 1], 0)
    return np.add.reduceat(counts.astype(np.int64), layout.row_ptr[:-1])
