"""Grouping matched pairs into clusters that do not chain.

Single-link clustering chains: A~B and B~C would put A and C together even
when A and C look nothing alike (a crop of a crop of a crop). Here every
cluster is a star around its keeper: each member matches the keeper directly.
Exact copies (same bytes or same pixels) are an equivalence relation, so they
are merged first and travel together.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass


class UnionFind:
    def __init__(self):
        self.parent: dict = {}

    def find(self, x):
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a, b) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra

    def groups(self) -> list[list]:
        out = defaultdict(list)
        for x in list(self.parent):
            out[self.find(x)].append(x)
        return list(out.values())


@dataclass
class Star:
    """A cluster: the keeper and every member that matches it directly."""

    keeper: Hashable
    members: list  # keeper first


def star_clusters(
    nodes: Iterable[Hashable],
    edges: Iterable[tuple[Hashable, Hashable]],
    priority: Callable[[Hashable], tuple],
) -> list[Star]:
    """Cover each connected component with stars around its best nodes.

    Inside a component, the remaining node that ranks first by ``priority``
    (smaller is better) becomes a keeper and takes all its remaining direct
    neighbours; this repeats until the component is used up. Nodes left with
    no neighbour are not clusters and are dropped.
    """
    adj: dict = defaultdict(set)
    for a, b in edges:
        if a != b:
            adj[a].add(b)
            adj[b].add(a)
    return lazy_star_clusters(nodes, adj, priority,
                              confirm=lambda center, others, taken: set(others))


def lazy_star_clusters(
    nodes: Iterable[Hashable],
    candidates: dict,
    priority: Callable[[Hashable], tuple],
    confirm: Callable[[Hashable, list, set], set],
) -> list[Star]:
    """Star clustering where edges are confirmed only when they can matter.

    ``candidates[n]`` is the set of possible neighbours of ``n`` (symmetric).
    Nodes are visited best ``priority`` first; a visited node that is still
    free asks ``confirm(node, free_candidates, taken)`` which nodes really
    match it (its free candidates, or other free nodes it found and checked
    itself), and takes them. The result equals star clustering on the
    confirmed graph, but an edge between two nodes already taken by a better
    keeper is never checked, which saves most of the work inside large groups.

    A node with no candidate makes no star and, candidates being symmetric,
    is no one's candidate: it is not ranked (a caller's ``priority`` can
    cost a read per node). So ``confirm`` must return only nodes that have
    candidates, as one that looks further through its candidates'
    candidates does.
    """
    taken: set = set()
    stars: list[Star] = []
    ranked = [n for n in set(nodes) | set(candidates) if candidates.get(n)]
    for center in sorted(ranked, key=priority):
        if center in taken:
            continue
        taken.add(center)
        free = sorted((n for n in candidates.get(center, ()) if n not in taken), key=priority)
        if not free:
            continue
        ok = confirm(center, free, taken)
        members = sorted((n for n in ok if n not in taken), key=priority)
        if members:
            taken.update(members)
            stars.append(Star(center, [center, *members]))
    return stars
