"""Build the real-data dev set: artwork that Debian packages ship several times.

Nobody here made these images: wallpapers at several screen sizes and ratios
(resized and re-framed copies), login-screen previews beside their
backgrounds (edited copies), icon themes that draw one icon at 256 and 48 px
or 128 and 64 px (resized copies), and, as look-alikes that must NOT match at
``--level copies``: light/dark and colour variants of one wallpaper, one
folder icon in eleven colours, icon state variants (trash empty/full, battery
levels), different wallpapers that share only a logo, paper textures, and
images whose picture lives only in the alpha channel.

    python benchmarks/build_realdev.py            # download, extract, select, write truth.json
    python benchmarks/build_realdev.py --check    # also list images per group (no download)

It rebuilds on a fresh Debian 12 (bookworm) machine from ``PACKAGES`` (names
AND versions): ``apt-get update`` once, then ``apt-get download NAME=VERSION``
and ``dpkg-deb -x`` into ``benchmarks/_work/realdev/`` (git-ignored; images
are never committed). Output:

- ``benchmarks/_work/realdev/images/<package>/<path>``: the dev set;
- ``benchmarks/_work/realdev/truth.json``: groups of copies with each pair's
  relation (exact, same-pixels, resized, crop, edited) and the look-alike
  pairs that must not match (relation ``variant`` or ``same-scene`` plus why).

The rule for "the same picture" and what was checked by eye:
``benchmarks/REALDEV.md``. ``PACKAGES`` is an allow-list: the builder
downloads nothing else, and none of it is among the packages issue 13
reserves for held-out evaluation (those are named only there).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent / "_work" / "realdev"

#: Debian 12 (bookworm) packages and the exact versions the truth was checked on.
PACKAGES = {
    "breeze": "4:5.27.5-2",
    "lxqt-themes": "1.2.0-1",
    "lxde-common": "0.99.2-4",
    "xfdesktop4-data": "4.18.1-1",
    "xplanet-images": "1.3.1-3",
    "sddm-theme-elarun": "0.19.0-5",
    "sddm-theme-maldives": "0.19.0-5",
    "sddm-theme-maui": "0.19.0-5",
    "sddm-theme-maya": "0.19.0-5",
    "mypaint-data-extras": "2.0.1-9",
    "gnome-icon-theme": "3.12.0-5",
    "mate-icon-theme": "1.26.0-1",
    "mint-y-icons": "1.6.5-1",
    "tuxpaint-data": "1:0.9.28-sdl2-1",
    "scribus-template": "1.2.4.1-6",
}

#: Relations of true pairs, weakest last (the issue's list; the dev set has no
#: recaptures: those come from ``sets.py --set recapture``).
COPY_RELATIONS = ("exact", "same-pixels", "resized", "crop", "edited", "recapture")


@dataclass
class Item:
    """One selected file: where it comes from, where it goes, what it is."""
    src: Path
    dest: str                   # path under images/
    group: str                  # ground-truth group: files that are the same picture
    families: tuple[str, ...] = ()  # look-alike families: cross-group pairs must not match
    edited: bool = False        # an edited copy (overlay, logo, UI) of its group's picture
    unscored: str = ""          # files sharing this key and not a group or family: not scored


@dataclass
class Truth:
    images: list[str] = field(default_factory=list)
    groups: dict[str, list[str]] = field(default_factory=dict)
    pairs: list[dict] = field(default_factory=list)
    lookalikes: list[dict] = field(default_factory=list)
    unscored: list[dict] = field(default_factory=list)


# -- download and extract ----------------------------------------------------------

def fetch(root: Path = ROOT) -> dict[str, Path]:
    """Each package's extracted tree; download only what is missing."""
    debs, trees = root / "debs", {}
    debs.mkdir(parents=True, exist_ok=True)
    for name, version in PACKAGES.items():
        tree = root / "x" / name
        stamp = tree / ".extracted"
        if not (stamp.exists() and stamp.read_text() == version):
            deb = _find_deb(debs, name, version)
            if deb is None:
                subprocess.run(["apt-get", "download", f"{name}={version}"], cwd=debs, check=True)
                deb = _find_deb(debs, name, version)
                if deb is None:
                    raise SystemExit(f"build_realdev: apt-get download {name}={version} "
                                     "left no .deb (run apt-get update first?)")
            if tree.exists():
                shutil.rmtree(tree)
            tree.mkdir(parents=True)
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
            stamp.write_text(version)
        trees[name] = tree
    return trees


def _find_deb(debs: Path, name: str, version: str) -> Path | None:
    # apt-get writes the epoch colon as %3a in file names.
    want = f"{name}_{version.replace(':', '%3a')}_"
    return next((p for p in debs.glob("*.deb") if p.name.startswith(want)), None)


# -- selection: which files, which groups, which look-alike families ---------------

def _files(tree: Path, pattern: str) -> list[Path]:
    """Regular files (symlinks are aliases: the same file again) matching a glob."""
    return sorted(p for p in tree.glob(pattern) if p.is_file() and not p.is_symlink())


def _dest(pkg: str, tree: Path, p: Path) -> str:
    rel = p.relative_to(tree).as_posix()
    return f"{pkg}/{re.sub(r'^usr/share/', '', rel)}"


NEXT_SIZES = ("440x247", "1024x768", "1280x1024", "1366x768", "1920x1080", "1920x1200",
              "3840x2160", "1080x1920", "360x720")


def select(trees: dict[str, Path]) -> list[Item]:
    items: list[Item] = []

    def add(pkg, p, group, families=(), edited=False):
        items.append(Item(p, _dest(pkg, trees[pkg], p), group, tuple(families), edited))

    # Breeze "Next": one artwork at 9 sizes and 3 ratio families (4:3/5:4, 16:9/16:10, 9:16
    # portrait crops), a light and a dark version; screenshot.png is its shipped preview.
    t = trees["breeze"]
    base = t / "usr/share/wallpapers/Next/contents"
    for size in NEXT_SIZES:
        add("breeze", base / "images" / f"{size}.png", "next-light", ["next"])
        add("breeze", base / "images_dark" / f"{size}.png", "next-dark", ["next"])
    add("breeze", base / "screenshot.png", "next-light", ["next"])

    # LXQt wallpapers: see GROUPS_LXQT / LOOKALIKE_* below (checked by eye).
    t = trees["lxqt-themes"]
    for p in _files(t, "usr/share/lxqt/wallpapers/*"):
        if p.suffix.lower() in (".png", ".jpg"):
            group = LXQT_GROUPS.get(p.name, f"lxqt-{p.stem}")
            add("lxqt-themes", p, group, LXQT_FAMILIES.get(p.name, ()), p.name in LXQT_EDITED)
    for p in _files(trees["lxde-common"], "usr/share/lxde/wallpapers/*.jpg"):
        add("lxde-common", p, f"lxde-{p.stem}", ["lxde-colour"])
    for p in _files(trees["xfdesktop4-data"], "usr/share/backgrounds/xfce/*"):
        if p.suffix.lower() in (".png", ".jpg"):
            add("xfdesktop4-data", p, f"xfce-{p.stem}", ["xfce-logo"])
    t = trees["xplanet-images"]
    for name in ("earth.jpg", "night.jpg"):
        add("xplanet-images", t / "usr/share/xplanet/images" / name, f"xplanet-{name}",
            ["xplanet-earth"])

    # SDDM login themes: the background and the shipped preview (the login screen drawn
    # over it, resized and re-framed): an edited copy.
    for theme, bg, preview in (("elarun", "images/background.png", "elarun.jpg"),
                               ("maldives", "background.jpg", "maldives.jpg"),
                               ("maui", "background.png", "maui.jpg")):
        pkg = f"sddm-theme-{theme}"
        d = trees[pkg] / "usr/share/sddm/themes" / theme
        group = SDDM_GROUPS.get(theme, f"sddm-{theme}")
        add(pkg, d / bg, group, LXQT_FAMILIES.get("simple_blue_widescreen.png", ())
            if theme == "maui" else ())
        add(pkg, d / preview, group, edited=True)
    maya = trees["sddm-theme-maya"] / "usr/share/sddm/themes/maya/screenshots/hi_IN.png"
    add("sddm-theme-maya", maya, "sddm-maya")

    # MyPaint paper textures: each its own picture; numbered siblings are look-alikes.
    for p in _files(trees["mypaint-data-extras"], "usr/share/mypaint/backgrounds/*/*.png"):
        fam = re.sub(r"(_\d+|\d+)$", "", p.stem)
        add("mypaint-data-extras", p, f"mypaint-{p.stem}", ["mypaint-paper", f"mypaint-{fam}"])

    # GNOME and MATE icon themes: one icon drawn at 256 and 48 px is one picture.
    for pkg, theme, cats in (("gnome-icon-theme", "gnome", ("places", "devices", "status",
                                                           "emblems")),
                             ("mate-icon-theme", "mate", ("mimetypes",))):
        t = trees[pkg]
        for cat in cats:
            for big in _files(t, f"usr/share/icons/{theme}/256x256/{cat}/*.png"):
                small = big.parent.parent.parent / "48x48" / cat / big.name
                group = f"{theme}-{cat}-{big.stem}"
                fams = [f"{theme}-{cat}-{_icon_family(big.stem)}"]
                add(pkg, big, group, fams)
                if small.is_file() and not small.is_symlink():
                    add(pkg, small, group, fams)

    # Mint-Y: the places icons in 11 folder colours at 128 and 64 px. One colour and
    # name is one picture; the other colours are variants; folder states are look-alikes.
    t = trees["mint-y-icons"]
    for colour in MINT_COLOURS:
        theme = "Mint-Y" + (f"-{colour}" if colour else "")
        for big in _files(t, f"usr/share/icons/{theme}/places/128/*.png"):
            if big.stem not in MINT_NAMES:
                continue
            group = f"mint-{colour or 'Green'}-{big.stem}"
            fams = [f"mint-colour-{big.stem}", f"mint-state-{colour or 'Green'}"]
            add("mint-y-icons", big, group, fams)
            small = big.parent.parent / "64" / big.name
            if small.is_file() and not small.is_symlink():
                add("mint-y-icons", small, group, fams)

    # Tux Paint colouring-book starters: line art whose picture is mostly in the alpha
    # channel, and "-back" backgrounds that belong under a starter (a different picture).
    for p in _files(trees["tuxpaint-data"], "usr/share/tuxpaint/starters/*"):
        if p.suffix.lower() in (".png", ".jpeg", ".jpg") and p.name not in TUXPAINT_EXCLUDED:
            fam = re.split(r"[-_]", p.stem)[0]
            add("tuxpaint-data", p, f"tuxpaint-{p.stem}", [f"tuxpaint-{fam}"])
    # Scribus templates: each page preview beside its thumbnail (``<name>tn.png``), the
    # photos the templates use, a greyscale copy of one, translated screenshots.
    t = trees["scribus-template"]
    for p in _files(t, "usr/share/scribus/templates/*/*"):
        if p.suffix.lower() not in (".png", ".jpg") or p.name in SCRIBUS_EXCLUDED:
            continue
        stem = p.stem[:-2] if p.stem.endswith("tn") else p.stem
        group = SCRIBUS_GROUPS.get(p.name, f"scribus-{p.parent.name}-{stem}")
        add("scribus-template", p, group, SCRIBUS_FAMILIES.get(p.name, ()),
            p.name in SCRIBUS_EDITED)
        # A page preview shows the folder's photos laid out on a page (a small part
        # of it): those pairs are neither copies nor look-alikes, and are not scored.
        items[-1].unscored = f"scribus-{p.parent.name}"
    return items


#: Scribus: thumbnails too small to be pictures (13 px high) are left out.
SCRIBUS_EXCLUDED = {"ad1-sixth-bwtn.png", "ad3tn.png"}
#: One picture across template folders (checked by eye, sheets/scribus.png): the
#: greyscale teriyaki photo of the b/w menu; the splash screenshot whose status line
#: says "Initialisierung" in one language and "Inicjalizacja" in the other.
SCRIBUS_GROUPS = {"teriyaki.png": "scribus-teriyaki", "teriyaki-bw.png": "scribus-teriyaki",
                  "initialisierung.png": "scribus-splash", "inicjalizacja.png": "scribus-splash"}
SCRIBUS_EDITED = {"teriyaki-bw.png", "inicjalizacja.png"}
#: Look-alikes: different photographs of the moon and of one eclipse (same scene),
#: the app screenshot and project page in German and in Polish (translated UI:
#: a variant), the colour and black-and-white menus, blank label sheets.
SCRIBUS_FAMILIES = {
    "brightness.jpg": ("scribus-moon",), "halfmoon.jpg": ("scribus-moon",),
    "moon.jpg": ("scribus-moon",),
    "scribus_min_de.png": ("scribus-translated-app",), "scribus_min.png": ("scribus-translated-app",),
    "scribus_project_de.png": ("scribus-translated-page",),
    "scribus_project_pl.png": ("scribus-translated-page",),
    "scribus_project_detn.png": ("scribus-translated-page",),
    "scribus_project_pltn.png": ("scribus-translated-page",),
    "menu1.png": ("scribus-menu",), "menu1tn.png": ("scribus-menu",),
    "menu1-a4-3cols-bw.png": ("scribus-menu",), "menu1-a4-3cols-bwtn.png": ("scribus-menu",),
    "Avery5162.png": ("scribus-labels",), "Avery8254.png": ("scribus-labels",),
    "Avery8660.png": ("scribus-labels",), "Avery5162tn.png": ("scribus-labels",),
    "Avery8254tn.png": ("scribus-labels",), "Avery8660tn.png": ("scribus-labels",),
}


#: Left out after looking: a foreground layer (sky or water cut away to transparency)
#: beside its full background picture is neither clearly the same picture nor clearly
#: a different one.
TUXPAINT_EXCLUDED = {"reef.png", "reef-back.png", "skyline-sf-dusk.png",
                     "skyline-sf-dusk-back.jpeg"}


#: The Maui login background is the artwork LXQt ships as simple_blue_widescreen.png
#: (3361x2100 there, 1920x1200 here; found in the first baseline's false pairs, then
#: checked by eye: sheets/check1.png).
SDDM_GROUPS = {"maui": "lxqt-simple_blue_widescreen"}

MINT_COLOURS = ("", "Aqua", "Blue", "Brown", "Grey", "Orange", "Pink", "Purple", "Red", "Sand",
                "Teal")
MINT_NAMES = {"folder", "folder-open", "folder-drag-accept", "folder-documents",
              "folder-download", "folder-music", "folder-pictures", "folder-videos",
              "folder-remote", "user-home", "user-desktop"}

#: LXQt wallpapers that are one picture (checked by eye, sheets/wall3.png): the logo
#: versions of origami-light and simple_blue_widescreen add the LXQt/bird logo.
LXQT_GROUPS = {"origami-bright-logo.png": "lxqt-origami-light",
               "origami-light.png": "lxqt-origami-light",
               "waves-logo.png": "lxqt-simple_blue_widescreen",
               "simple_blue_widescreen.png": "lxqt-simple_blue_widescreen"}
LXQT_EDITED = {"origami-bright-logo.png", "waves-logo.png"}
#: Look-alike families: the origami set in light/dark/green, the plasma prism in three
#: colourings, the blue waves in purple, the triangles in two palettes, and different
#: wallpapers that share only the LXQt logo.
LXQT_FAMILIES = {
    "origami-light.png": ("lxqt-origami",), "origami-bright-logo.png": ("lxqt-origami", "lxqt-logo"),
    "origami-dark.png": ("lxqt-origami",), "lxqt-origami-green.png": ("lxqt-origami",),
    "kde-plasma.png": ("lxqt-prism",), "plasma-logo-bright.png": ("lxqt-prism", "lxqt-logo"),
    "plasma-logo-dark.png": ("lxqt-prism", "lxqt-logo"),
    "simple_blue_widescreen.png": ("lxqt-waves",), "waves-logo.png": ("lxqt-waves",),
    "waves-purple-logo.jpg": ("lxqt-waves",),
    "triangles.png": ("lxqt-triangles",), "triangles-logo.png": ("lxqt-triangles", "lxqt-logo"),
}

#: Why two members of a look-alike family are not the same picture, and their true
#: relation: ``variant`` (same artwork recoloured, light/dark, another state) or
#: ``different`` (different pictures that share a logo, a texture or a blank look).
FAMILY_WHY = [
    (r"^next$", "variant", "light/dark"),
    (r"^lxqt-(origami|prism|waves|triangles)$", "variant", "colour or light/dark"),
    (r"^lxde-colour$", "variant", "colour (shared logo)"),
    (r"^lxqt-logo$", "different", "different wallpapers sharing a logo"),
    (r"^xfce-logo$", "different", "different wallpapers sharing a logo"),
    (r"^xplanet-earth$", "variant", "day/night map"),
    (r"^mypaint-", "different", "paper texture"),
    (r"^(gnome|mate)-", "variant", "icon state or family"),
    (r"^mint-colour-", "variant", "folder colour"),
    (r"^mint-state-", "variant", "icon state"),
    (r"^tuxpaint-", "different", "colouring-book starter"),
    (r"^alpha$", "different", "picture only in the alpha channel"),
    (r"^scribus-moon$", "same-scene", "other photos of the moon / one eclipse"),
    (r"^scribus-translated", "variant", "translated screenshot or page"),
    (r"^scribus-(menu|labels)$", "variant", "b/w layout or blank label sheet"),
]


def _icon_family(stem: str) -> str:
    """Icons whose names share the first word (user-trash/-full, battery-*) are
    drawn alike; a family of look-alikes."""
    return stem.split("-")[0]


# -- relations -------------------------------------------------------------------

def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _pixels(p: Path) -> np.ndarray:
    with Image.open(p) as im:
        return np.asarray(im.convert("RGBA"))


def _size(p: Path) -> tuple[int, int]:
    with Image.open(p) as im:
        return im.size


def relation(a: Path, b: Path, edited: bool) -> str:
    """The true relation of two files of one group (the strongest that holds)."""
    if _sha(a) == _sha(b):
        return "exact"
    sa, sb = _size(a), _size(b)
    if sa == sb and np.array_equal(_pixels(a), _pixels(b)):
        return "same-pixels"
    if edited:
        return "edited"
    (bw, bh), (sw, sh) = sorted((sa, sb), reverse=True)
    f = sw / bw
    # Same aspect ratio within 1.5 %, or within the rounding of a small thumbnail's side.
    same_ratio = abs(bw / bh - sw / sh) / (bw / bh) < 0.015 or abs(bh * f - sh) <= 1.5
    return "resized" if same_ratio else "crop"


def alpha_only(p: Path) -> bool:
    """True when the picture is in the alpha channel: the colour channels are
    (nearly) one flat colour wherever alpha is not zero, while alpha varies, so
    the image flattened by dropping alpha is blank."""
    with Image.open(p) as im:
        if "A" not in im.getbands() and not (im.mode == "P" and "transparency" in im.info):
            return False
        arr = np.asarray(im.convert("RGBA")).astype(np.float32)
    alpha, rgb = arr[..., 3], arr[..., :3]
    if alpha.std() < 10:
        return False
    return float(rgb.reshape(-1, 3).std(axis=0).max()) < 6.0


def drop_repeats(items: list[Item], keep: int = 2, log=print) -> list[Item]:
    """Keep at most ``keep`` byte-identical copies of a file: themes ship the same
    file under many names and colours, and hundreds of trivial exact pairs would
    swamp the pairs that test anything."""
    seen: dict[str, int] = {}
    out = []
    for it in sorted(items, key=lambda m: m.dest):
        h = _sha(it.src)
        seen[h] = seen.get(h, 0) + 1
        if seen[h] <= keep:
            out.append(it)
    log(f"dropped {len(items) - len(out)} byte-identical repeats (kept {keep} per content)")
    return out


#: MATE mimetype icons whose 48 px file is another drawing than the 256 px one (a
#: generic page or diamond at 256 px, a language logo at 48 px); found by eye on the
#: contact sheets (``realdev_sheets.py --groups``). A correlation rule on 32 px views
#: did not separate these from same-design pairs (both scored 0.4-0.9), so the list
#: is explicit.
MATE_OTHER_DRAWING_AT_48 = {
    "application-x-java", "application-x-javascript", "application-x-php",
    "application-x-planner", "application-x-python-bytecode", "application-x-ruby",
    "application-x-homebank", "text-x-boo", "text-x-java", "text-x-python", "text-x-patch"}

#: MATE icons whose 256 px file is a generic drawing that the theme ships at 48 px
#: under another name (the 48 px file of their own name being another drawing, see
#: ``MATE_OTHER_DRAWING_AT_48``): the 256 px text page of homebank and java is the
#: 48 px text-x-generic page, the 256 px purple diamond of javascript and
#: python-bytecode the 48 px text-x-script diamond, hand-hinted. By the rule in
#: REALDEV.md (the same design at another size) they are copies; checked by eye
#: side by side at 48 px (the first baseline listed them as false pairs).
MATE_SAME_DRAWING_AT_48 = {
    "application-x-homebank": "text-x-generic", "application-x-java": "text-x-generic",
    "application-x-javascript": "text-x-script",
    "application-x-python-bytecode": "text-x-script"}


def refine_groups(items: list[Item], log=print) -> None:
    """Rules applied to every rebuild, after the per-package rules:

    1. a MATE icon whose 48 px file is another drawing is split from its 256 px
       file (``MATE_OTHER_DRAWING_AT_48``), and a 256 px MATE icon that is the
       generic drawing another name ships at 48 px joins that name's group
       (``MATE_SAME_DRAWING_AT_48``);
    2. files with identical pixels are one group wherever they come from
       (themes copy files under new names rather than linking them).
    """
    for it in items:
        if (it.dest.startswith("mate-icon-theme/") and "/48x48/" in it.dest
                and Path(it.dest).stem in MATE_OTHER_DRAWING_AT_48):
            it.group += "@48"
            log(f"split {it.dest}: another drawing than the 256 px icon")
    small = {Path(it.dest).stem: it.group for it in items
             if it.dest.startswith("mate-icon-theme/") and "/48x48/" in it.dest}
    for it in items:
        other = MATE_SAME_DRAWING_AT_48.get(Path(it.dest).stem)
        if (it.dest.startswith("mate-icon-theme/") and "/256x256/" in it.dest
                and other in small):
            it.group = small[other]
            log(f"join {it.dest} to {other}: the same drawing at 48 px")
    parent: dict[str, str] = {}

    def find(g: str) -> str:
        while parent.get(g, g) != g:
            g = parent[g]
        return g

    first: dict[str, str] = {}
    for it in sorted(items, key=lambda m: m.dest):
        px = _pixels(ROOT / "images" / it.dest)
        key = hashlib.sha256(repr(px.shape).encode() + px.tobytes()).hexdigest()
        if key in first:
            a, b = sorted((find(first[key]), find(it.group)))
            if a != b:
                parent[b] = a
                log(f"merge {b} into {a}: identical pixels ({it.dest})")
        else:
            first[key] = it.group
    for it in items:
        it.group = find(it.group)


def build_truth(items: list[Item]) -> Truth:
    refine_groups(items)
    truth = Truth(images=sorted(it.dest for it in items))
    by_group: dict[str, list[Item]] = {}
    for it in items:
        by_group.setdefault(it.group, []).append(it)
    for gid, members in sorted(by_group.items()):
        if len(members) < 2:
            continue
        truth.groups[gid] = sorted(m.dest for m in members)
        for a, b in itertools.combinations(sorted(members, key=lambda m: m.dest), 2):
            rel = relation(ROOT / "images" / a.dest, ROOT / "images" / b.dest, a.edited or b.edited)
            truth.pairs.append({"a": a.dest, "b": b.dest, "relation": rel, "group": gid})
    # Look-alikes: same family, different group.
    fams: dict[str, list[Item]] = {}
    for it in items:
        for f in it.families:
            fams.setdefault(f, []).append(it)
    alpha = [it for it in items if alpha_only(ROOT / "images" / it.dest)]
    if len(alpha) > 1:
        fams["alpha"] = alpha
    seen = set()
    for fam, members in sorted(fams.items()):
        rel, why = next((r, w) for pat, r, w in FAMILY_WHY if re.search(pat, fam))
        for a, b in itertools.combinations(sorted(members, key=lambda m: m.dest), 2):
            key = (a.dest, b.dest)
            if a.group == b.group or key in seen:
                continue
            seen.add(key)
            truth.lookalikes.append({"a": a.dest, "b": b.dest, "relation": rel, "why": why,
                                     "family": fam})
    by_key: dict[str, list[Item]] = {}
    for it in items:
        if it.unscored:
            by_key.setdefault(it.unscored, []).append(it)
    for key, members in sorted(by_key.items()):
        for a, b in itertools.combinations(sorted(members, key=lambda m: m.dest), 2):
            if a.group != b.group and (a.dest, b.dest) not in seen:
                truth.unscored.append({"a": a.dest, "b": b.dest, "why": key})
    return truth


def copy_images(items: list[Item], root: Path = ROOT) -> None:
    out = root / "images"
    if out.exists():
        shutil.rmtree(out)
    for it in items:
        dst = out / it.dest
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(it.src, dst)


def write_truth(truth: Truth, root: Path = ROOT) -> Path:
    data = {"packages": [{"name": n, "version": v} for n, v in PACKAGES.items()],
            "images": truth.images,
            "groups": [{"id": g, "members": m} for g, m in truth.groups.items()],
            "pairs": truth.pairs, "lookalikes": truth.lookalikes,
            # Pairs neither counted as found nor as false (a page and a photo on it).
            "unscored": truth.unscored}
    path = root / "truth.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
    return path


def summary(truth: Truth) -> str:
    from collections import Counter
    rel = Counter(p["relation"] for p in truth.pairs)
    why = Counter(p["why"] for p in truth.lookalikes)
    lines = [f"{len(truth.images)} images, {len(truth.groups)} groups of copies, "
             f"{len(truth.pairs)} true pairs, {len(truth.lookalikes)} look-alike pairs",
             "true pairs by relation: " + ", ".join(f"{k} {v}" for k, v in rel.most_common()),
             "look-alikes by why: " + ", ".join(f"{k} {v}" for k, v in why.most_common())]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--root", type=Path, default=ROOT, help="work folder (default %(default)s)")
    ap.parse_args()
    trees = fetch()
    items = select(trees)
    dests = [it.dest for it in items]
    dup = {d for d in dests if dests.count(d) > 1}
    if dup:
        raise SystemExit(f"build_realdev: duplicate destinations {sorted(dup)[:5]}")
    items = drop_repeats(items)
    copy_images(items)
    truth = build_truth(items)
    print(f"wrote {write_truth(truth)}")
    print(summary(truth))


if __name__ == "__main__":
    sys.exit(main())
