"""Clusters never chain: every member matches its cluster's keeper directly."""

from matchkit.match.cluster import UnionFind, star_clusters


def test_chain_is_not_merged():
    # A~B, B~C, but not A~C. A ranks first, so A keeps B; C stands alone.
    stars = star_clusters("ABC", [("A", "B"), ("B", "C")], priority=lambda n: n)
    assert [(s.keeper, s.members) for s in stars] == [("A", ["A", "B"])]


def test_chain_keeps_later_pairs_when_possible():
    # A~B, B~C, C~D: A takes B, then C takes D.
    stars = star_clusters("ABCD", [("A", "B"), ("B", "C"), ("C", "D")], priority=lambda n: n)
    assert sorted((s.keeper, tuple(s.members)) for s in stars) == [
        ("A", ("A", "B")), ("C", ("C", "D"))]


def test_clique_is_one_cluster_with_best_keeper():
    edges = [("x", "y"), ("y", "z"), ("x", "z")]
    order = {"z": 0, "x": 1, "y": 2}
    stars = star_clusters("xyz", edges, priority=lambda n: (order[n],))
    assert len(stars) == 1 and stars[0].keeper == "z" and set(stars[0].members) == set("xyz")


def test_every_member_is_adjacent_to_keeper_on_random_graphs():
    import random
    rng = random.Random(0)
    for _ in range(50):
        nodes = list(range(30))
        edges = {(a, b) for a in nodes for b in nodes if a < b and rng.random() < 0.1}
        stars = star_clusters(nodes, edges, priority=lambda n: (n * 7919) % 31)
        seen = set()
        for s in stars:
            assert s.members[0] == s.keeper
            for m in s.members[1:]:
                assert (min(m, s.keeper), max(m, s.keeper)) in edges
            assert not seen & set(s.members)
            seen |= set(s.members)


def test_union_find_groups():
    uf = UnionFind()
    uf.union(1, 2)
    uf.union(3, 4)
    uf.union(2, 4)
    uf.find(5)
    assert sorted(sorted(g) for g in uf.groups()) == [[1, 2, 3, 4], [5]]
