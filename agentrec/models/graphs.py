"""Session graphs for SR-GNN, NISER and MSGAT, built in numpy for a whole batch at once.

Following SR-GNN (Wu et al., AAAI 2019; github.com/CRIPAC-DIG/SR-GNN, ``utils.py``): the nodes of a
session are its distinct items (in sorted id order), an edge joins each item to the next one
clicked, and two normalised adjacency matrices carry messages along and against the edges.
"""

from __future__ import annotations

import numpy as np


def unique_nodes(items: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct items of each session and where each position points among them.

    Args:
        items: ``(B, L)`` item ids, left-aligned, 0-padded.
        lengths: ``(B,)`` real lengths.

    Returns:
        nodes: ``(B, U)`` distinct item ids per row in ascending order, 0-padded (U = most distinct).
        alias: ``(B, L)`` index into ``nodes`` of each position (0 at padding positions).
    """
    batch, width = items.shape
    real = np.arange(width)[None, :] < lengths[:, None]
    big = np.iinfo(np.int64).max
    keys = np.where(real, items, big)
    order = np.argsort(keys, axis=1, kind="stable")
    ordered = np.take_along_axis(keys, order, axis=1)
    first = np.ones_like(ordered, dtype=bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    node_of_sorted = np.cumsum(first, axis=1) - 1
    alias = np.zeros_like(items, dtype=np.int64)
    np.put_along_axis(alias, order, node_of_sorted, axis=1)
    alias[~real] = 0
    is_node = first & (ordered != big)
    n_nodes = is_node.sum(1)
    nodes = np.zeros((batch, max(1, int(n_nodes.max(initial=1)))), dtype=np.int64)
    rows, cols = np.nonzero(is_node)
    nodes[rows, node_of_sorted[rows, cols]] = ordered[rows, cols]
    return nodes, alias


def transition_counts(alias: np.ndarray, lengths: np.ndarray, n_nodes: int) -> np.ndarray:
    """``(B, U, U)`` matrix with 1 where node u is followed by node v somewhere in the session."""
    batch, width = alias.shape
    adjacency = np.zeros((batch, n_nodes, n_nodes), dtype=np.float32)
    if width > 1:
        step = np.arange(width - 1)[None, :] < (lengths[:, None] - 1)
        rows = np.broadcast_to(np.arange(batch)[:, None], step.shape)[step]
        adjacency[rows, alias[:, :-1][step], alias[:, 1:][step]] = 1.0
    return adjacency


def session_graphs(items: np.ndarray, lengths: np.ndarray) -> dict[str, np.ndarray]:
    """SR-GNN inputs: nodes, alias, and the in/out adjacency normalised by degree.

    ``adj_in[b, v, u] = A[u, v] / indegree(v)`` (node v averages its predecessors) and
    ``adj_out[b, u, v] = A[u, v] / outdegree(u)`` (node u averages its successors), as in SR-GNN.
    """
    nodes, alias = unique_nodes(items, lengths)
    adjacency = transition_counts(alias, lengths, nodes.shape[1])
    indegree = adjacency.sum(1, keepdims=True)  # (B, 1, U): column sums
    outdegree = adjacency.sum(2, keepdims=True)  # (B, U, 1): row sums
    adj_in = (adjacency / np.where(indegree == 0, 1.0, indegree)).transpose(0, 2, 1)
    adj_out = adjacency / np.where(outdegree == 0, 1.0, outdegree)
    return {"nodes": nodes, "alias": alias, "adj_in": np.ascontiguousarray(adj_in), "adj_out": adj_out}
