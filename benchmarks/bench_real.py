"""Real-data benchmark: matchkit dedupe on the Debian artwork dev set.

Runs ``matchkit dedupe`` (default settings, no model weights, ``--level
copies`` when the CLI has that option) on the set that ``build_realdev.py``
builds, and scores it the way ``bench_dedupe.py`` does: every two files in
one output cluster are a found pair; the true pairs are the pairs inside the
ground-truth groups. Also reported: recall per true relation kind, how many
look-alike pairs (variants, shared logos, textures, alpha-only pictures) were
merged, per reason, and, when the JSON gives a ``relation`` per pair, a
confusion table of true against reported relations.

    python benchmarks/build_realdev.py        # once (downloads ~200 MB of .debs)
    python benchmarks/bench_real.py           # writes its RESULTS.md section
    python benchmarks/bench_real.py --no-write --level variants
    python benchmarks/bench_real.py --no-write --misses   # why each true pair was missed

The false pairs and the misses go to ``benchmarks/_work/realdev_errors.txt``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

REALDEV = C.WORK / "realdev"
ERRORS = C.WORK / "realdev_errors.txt"


def cli_has_option(option: str, command: str = "dedupe") -> bool:
    """Whether ``matchkit COMMAND --help`` lists ``option`` (the CLI under test
    may predate it)."""
    out = subprocess.run([sys.executable, "-m", "matchkit.cli", command, "--help"],
                         capture_output=True, text=True)
    return option in out.stdout


def load_truth(root: Path = REALDEV) -> dict:
    path = root / "truth.json"
    if not path.exists():
        raise SystemExit(f"bench_real: no {path}; run benchmarks/build_realdev.py first")
    return json.loads(path.read_text())


def _rel(path: str, images: Path) -> str:
    try:
        return Path(path).resolve().relative_to(images.resolve()).as_posix()
    except ValueError:
        return path


def run(images: Path, extra: list[str]) -> tuple[dict, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        cmd = [sys.executable, "-m", "matchkit.cli", "dedupe", str(images), "--json", str(out),
               "-q", *extra]
        wall, _, rc = C.run_measured(cmd)
        if rc:
            raise SystemExit(f"matchkit failed ({rc}): {' '.join(cmd)}")
        return json.loads(out.read_text()), wall


def evaluate(report: dict, truth: dict, images: Path) -> dict:
    """All scores of one dedupe report against the dev-set truth."""
    clusters = [[_rel(m, images) for m in c["members"]] for c in report.get("clusters", [])]
    pred = C.pairs_from_groups(clusters) - {frozenset((p["a"], p["b"]))
                                            for p in truth.get("unscored", [])}
    true_rel = {frozenset((p["a"], p["b"])): p["relation"] for p in truth["pairs"]}
    look = {frozenset((p["a"], p["b"])): p for p in truth["lookalikes"]}
    scores = C.score(pred, set(true_rel))

    per_kind = []
    for kind, n in Counter(true_rel.values()).most_common():
        found = sum(1 for k, r in true_rel.items() if r == kind and k in pred)
        per_kind.append({"relation": kind, "true_pairs": n, "found": found, "recall": found / n})

    per_why = []
    for why, n in Counter(p["why"] for p in look.values()).most_common():
        merged = sum(1 for k, p in look.items() if p["why"] == why and k in pred)
        per_why.append({"look-alike": why, "relation": next(
            p["relation"] for p in look.values() if p["why"] == why),
            "pairs": n, "merged": merged, "merged_pct": 100.0 * merged / n})
    merged_all = sum(1 for k in look if k in pred)

    # Relations the report states: keeper-member pairs, and member-member
    # pairs of clusters small enough to list them (``member_relations``).
    stated = {}
    for c in report.get("clusters", []):
        for p in [*c.get("pairs", []), *c.get("member_relations", [])]:
            if "relation" in p:
                stated[frozenset((_rel(p["a"], images), _rel(p["b"], images)))] = p["relation"]
    confusion: Counter = Counter()
    if stated:
        for k, r in true_rel.items():
            if k in pred:
                confusion[(r, stated.get(k, "(same cluster, no pair)"))] += 1
        for k, p in look.items():
            if k in stated:
                confusion[(p["relation"], stated[k])] += 1

    per_pkg = []
    pkg = lambda path: path.split("/", 1)[0]  # noqa: E731 - images/<package>/...
    for name in sorted({pkg(m) for m in truth["images"]}):
        mine = [k for k in true_rel if pkg(min(k)) == name]
        false = [k for k in pred - set(true_rel) if name in {pkg(x) for x in k}]
        per_pkg.append({"package": name, "true_pairs": len(mine),
                        "found": sum(1 for k in mine if k in pred), "false_pairs": len(false)})

    false_pairs = sorted(tuple(sorted(k)) for k in pred - set(true_rel))
    misses = sorted(tuple(sorted(k)) for k in set(true_rel) - pred)
    return {"scores": scores, "per_kind": per_kind, "per_why": per_why, "per_pkg": per_pkg,
            "lookalike_pairs": len(look), "lookalike_merged": merged_all,
            "confusion": confusion, "false_pairs": false_pairs, "misses": misses,
            "true_rel": true_rel, "look": look, "skipped": report.get("skipped", [])}


def confusion_table(confusion: Counter) -> str:
    rows_k = sorted({t for t, _ in confusion}, key=str)
    cols_k = sorted({p for _, p in confusion}, key=str)
    rows = [{"true \\ reported": t, **{c: confusion.get((t, c), "") for c in cols_k}}
            for t in rows_k]
    return C.table(rows, ["true \\ reported", *cols_k])


def relation_summary(ev: dict) -> str:
    """How often the stated relation of a found true pair is its true one: of
    the pairs the JSON lists (keeper and member), and of all found true pairs
    (keeper-member pairs and ``member_relations``), and of all found true
    pairs (members of clusters too large for ``member_relations`` have no
    stated relation to each other)."""
    kinds = set(ev["true_rel"].values())
    listed = right = unlisted = 0
    for (t, r), n in ev["confusion"].items():
        if t not in kinds:
            continue
        if r == "(same cluster, no pair)":
            unlisted += n
        else:
            listed += n
            right += n if r == t else 0
    found = listed + unlisted
    return (f"Relation right on {right} of {listed} listed true pairs "
            f"({100.0 * right / max(1, listed):.1f}%); {unlisted} more found true pairs "
            f"are two members of one cluster with no stated relation "
            f"({100.0 * right / max(1, found):.1f}% of all {found} found true pairs).")


def write_errors(ev: dict, path: Path = ERRORS) -> Path:
    lines = [f"# bench_real errors: {len(ev['false_pairs'])} false pairs, "
             f"{len(ev['misses'])} missed true pairs", "", "## false pairs (a, b, why)"]
    for a, b in ev["false_pairs"]:
        p = ev["look"].get(frozenset((a, b)))
        why = f"look-alike: {p['why']} ({p['relation']})" if p else "unrelated"
        lines.append(f"{a}\t{b}\t{why}")
    lines += ["", "## missed true pairs (a, b, relation)"]
    lines += [f"{a}\t{b}\t{ev['true_rel'][frozenset((a, b))]}" for a, b in ev["misses"]]
    if ev["skipped"]:
        lines += ["", "## skipped by matchkit"]
        lines += [f"{s.get('path')}\t{s.get('reason')}" for s in ev["skipped"]]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


def _icon_reasons(pairs: list[tuple[str, str]], images: Path, names: list[str]) -> dict:
    """Why ``thumbmatch`` did not pair each of ``pairs`` (files under
    ``images``) that are both icons: the icon views of all ``names``, their
    candidates and one ``IconDecider``, as a run builds them."""
    from matchkit.signals.thumbmatch import IconDecider, icon_candidates, icon_view

    ids = {n: i for i, n in enumerate(names)}
    views = {ids[n]: v for n in names if (v := icon_view(str(images / n))) is not None}
    cands = icon_candidates(views)
    decider = IconDecider(views, list(cands))
    out = {}
    for a, b in pairs:
        x, y = ids.get(a), ids.get(b)
        if x not in views or y not in views:
            continue
        ok, c = decider.decide(x, y)
        if views[x].size == views[y].size:
            out[(a, b)] = "icons of one size: " + ("a drawn difference" if ok is False
                                                    else "left to the other rules")
            continue
        why = [] if (min(x, y), max(x, y)) in cands else ["not an icon candidate"]
        why += [f"fails {f}" for f in c.failures()]
        for u, v in ((x, y), (y, x)):
            rivals = sorted((d.rank(), names[o]) for (p, q), d in decider.compared.items()
                            if u in (p, q) and (o := q if p == u else p) != v
                            and views[o].size == views[v].size and d.rank() < c.rank() - 1e-3)
            if rivals:
                why.append(f"{Path(names[u]).name} @{views[u].size[0]}: {len(rivals)} closer "
                           f"views, nearest {rivals[0][1]} ({rivals[0][0]:.1f} < {c.rank():.1f})")
        out[(a, b)] = "; ".join(why) if why else "accepted (lost in clustering?)"
    return out


def explain_misses(ev: dict, report: dict, truth: dict, images: Path) -> str:
    """One line per missed true pair: relation, pixel sizes, which output
    cluster each file ended in and, for two icons, why ``thumbmatch`` did not
    pair them (no candidate, a failed absolute test, closer views)."""
    from PIL import Image

    where = {}
    for k, c in enumerate(report.get("clusters", [])):
        for m in c["members"]:
            where[_rel(m, images)] = (k, len(c["members"]))

    def size(name: str) -> str:
        try:
            with Image.open(images / name) as im:
                return f"{im.size[0]}x{im.size[1]}"
        except Exception:  # noqa: BLE001 - a diagnostic never stops the report
            return "?"

    def fate(name: str) -> str:
        k, n = where.get(name, (None, 1))
        return "alone" if k is None else f"cluster {k} ({n} files)"

    icons = _icon_reasons(ev["misses"], images, list(truth["images"]))
    lines = [f"## missed true pairs: {len(ev['misses'])} (relation, sizes, where each went, why)"]
    for a, b in ev["misses"]:
        lines.append(f"{a}  {b}\n    {ev['true_rel'][frozenset((a, b))]}, {size(a)} vs {size(b)}; "
                     f"{fate(a)} / {fate(b)}" + (f"; icon: {icons[(a, b)]}" if (a, b) in icons
                                                 else ""))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--level", default="copies",
                    help="--level passed to matchkit when it supports it (default copies)")
    ap.add_argument("--root", type=Path, default=REALDEV, help="the built dev set")
    ap.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    ap.add_argument("--misses", action="store_true",
                    help="also print every missed true pair with its sizes, the output "
                         "clusters its files went to and, for icons, why thumbmatch did not "
                         "pair them (e.g. --no-write --misses)")
    ap.add_argument("--vote-index", default=None,
                    help="--vote-index passed to matchkit (e.g. ivf-64k; default: its default)")
    args = ap.parse_args()

    truth = load_truth(args.root)
    images = args.root / "images"
    level = cli_has_option("--level")
    extra = ["--level", args.level] if level else []
    if args.vote_index:
        extra += ["--vote-index", args.vote_index]
    report, wall = run(images, extra)
    ev = evaluate(report, truth, images)
    s = ev["scores"]
    head = C.table([{"images": len(truth["images"]), "true_pairs": s["true_pairs"],
                     "pairs_found": s["pairs_found"], "tp": s["tp"],
                     "precision": s["precision"], "recall": s["recall"],
                     "lookalike_pairs": ev["lookalike_pairs"],
                     "lookalike_merged_pct": 100.0 * ev["lookalike_merged"]
                     / max(1, ev["lookalike_pairs"]), "wall_s": wall}],
                   ["images", "true_pairs", "pairs_found", "tp", "precision", "recall",
                    "lookalike_pairs", "lookalike_merged_pct", "wall_s"])
    kinds = C.table(ev["per_kind"], ["relation", "true_pairs", "found", "recall"])
    pkgs = C.table(ev["per_pkg"], ["package", "true_pairs", "found", "false_pairs"])
    whys = C.table(ev["per_why"], ["look-alike", "relation", "pairs", "merged", "merged_pct"])
    conf = (confusion_table(ev["confusion"]) + "\n\n" + relation_summary(ev)
            if ev["confusion"] else
            "(the JSON has no `relation` per pair: no confusion table)")
    errors = write_errors(ev)
    level_note = (f"`--level {args.level}`" if level else
                  "default settings (this matchkit has no `--level` option)")
    text = (f"{head}\n\nRecall per true relation:\n\n{kinds}\n\n"
            f"Per package (false pairs: found pairs with a file of the package that are "
            f"not true pairs):\n\n{pkgs}\n\n"
            f"Look-alike pairs merged (must not match at `--level copies`):\n\n{whys}\n\n"
            f"True vs reported relation (pairs the JSON lists):\n\n{conf}\n")
    print(text)
    print(f"errors: {errors}")
    if args.misses:
        print("\n" + explain_misses(ev, report, truth, images))
    if not args.no_write:
        pk = ", ".join(f"{p['name']}={p['version']}" for p in truth["packages"])
        body = (f"Data: the real dev set (`benchmarks/build_realdev.py`, rule and checks in "
                f"`benchmarks/REALDEV.md`): {len(truth['images'])} images from Debian 12 "
                f"packages {pk}; {len(truth['groups'])} groups of copies, {s['true_pairs']} "
                f"true pairs, {ev['lookalike_pairs']} look-alike pairs.\n"
                f"Command: `python benchmarks/bench_real.py` ({level_note}, no model weights). "
                f"A found pair is any two files in one output cluster.\n\n{text}")
        C.write_section("dedupe: real dev set (Debian artwork)", body)


if __name__ == "__main__":
    main()
