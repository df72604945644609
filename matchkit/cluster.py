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
    uf = UnionFind()
    for n in nodes:
        uf.find(n)
    for a, b in edges:
        if a == b:
            continue
        adj[a].add(b)
        adj[b].add(a)
        uf.union(a, b)
    stars: list[Star] = []
    for comp in uf.groups():
        if len(comp) < 2:
            continue
        remaining = set(comp)
        for center in sorted(comp, key=priority):
            if center not in remaining:
                continue
            remaining.discard(center)
            take = sorted(adj[center] & remaining, key=priority)
            if take:
                remaining.difference_update(take)
                stars.append(Star(center, [center, *take]))
    return stars
