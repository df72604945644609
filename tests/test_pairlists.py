"""``PairLists``: clustering's evidence by pair reads as a defaultdict(list) did."""

import random
from collections import defaultdict

import pytest

from matchkit.match.pairlists import Neighbours, PairLists


@pytest.mark.parametrize("seed", range(20))
def test_pair_lists_read_as_a_dict_of_lists(seed):
    rng = random.Random(seed)
    ids = list(range(12)) + [2**32 - 1, 2**32, 2**40]  # (ids past 32 bits keyed as pairs)

    def pair():
        x, y = rng.sample(ids, 2)
        return (min(x, y), max(x, y))

    want: dict = defaultdict(list)
    got = PairLists()
    for n in range(rng.randrange(60)):
        p = pair()
        want[p].append(n)
        got.add(p, n)
    asked = [pair() for _ in range(30)]
    for p in asked + list(want):
        assert list(got[p]) == want.get(p, [])
        assert list(got.get(p, [])) == want.get(p, [])
        assert got.get(p, None) is None if p not in want else len(got.get(p)) == len(want[p])
    assert len(got) == len(want)  # (reading a missing pair added nothing)
    assert sorted((k, list(v)) for k, v in got.items()) == sorted(want.items())
    assert sorted(map(list, got.values())) == sorted(want.values())


@pytest.mark.parametrize("seed", range(10))
def test_neighbours_read_as_a_dict_of_sets(seed):
    rng = random.Random(seed)
    pairs = [tuple(rng.sample(range(15), 2)) for _ in range(rng.randrange(40))]
    want: dict = defaultdict(set)
    for x, y in pairs:
        want[x].add(y)
        want[y].add(x)
    got = Neighbours(pairs)
    for x, y in [tuple(rng.sample(range(20), 2)) for _ in range(10)]:
        got.add(x, y)
        want[x].add(y)
        want[y].add(x)
    assert set(got) == set(want) and len(got) == len(want)
    for x in range(25):
        assert got[x] == tuple(sorted(want.get(x, ())))
        assert (x in got) == (x in want) and got.get(x, ()) == got[x]
