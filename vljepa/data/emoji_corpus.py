"""Emoji and named-icon caption corpus: many artists' pictures of the same named things.

Build (issue 26, item 1)::

    python -m vljepa.data.emoji_corpus build --out DIR [--sources emoji emoji-extra icons]
        [--limit N] [--size 64] [--cache-dir DIR] [--force]
    python -m vljepa.data.emoji_corpus sources        # the source table, presets, denylist
    python -m vljepa.data.emoji_corpus sheet DIR OUT.png [--exclude-artists apple facebook]

Sources are npm packages at pinned versions (:data:`PACKAGES`; each tarball's sha512 is pinned
too, checked on download and on every later run, and its SHA-256 is recorded):

* PNGs per artist from ``emoji-datasource-{apple,twitter,facebook}`` (their single 64-px images,
  only those the data flags as the artist's own, ``has_img_<artist>``: never a fallback from
  another vendor), with ``emoji-datasource``'s ``emoji.json`` to list them;
* SVG sets in Iconify JSON, rendered with ``resvg-py``: ``@iconify-json/{twemoji, openmoji,
  fluent-emoji, fluent-emoji-flat, fluent-emoji-high-contrast}`` and any set of ``@iconify/json``
  as ``iconify:<prefix>`` (emojione, fxemoji, game-icons, mdi, ...);
* images named by code point sequence: ``@lobehub/fluent-emoji-3d`` (Microsoft's Fluent Emoji as
  3D renders, 256-px WebP, skin tones included; source ``fluent-emoji-3d``, preset ``emoji-3d``);
* names, keywords and groups from ``emojibase-data`` (CLDR labels, tags, groups) and
  ``emojilib`` (keywords, by relevance).

HARD RULE: Google's and Noto's emoji are never used. :func:`check_allowed` refuses any source,
package, Iconify prefix, set author or tarball member matching :data:`DENIED_PACKAGES`,
:data:`DENIED_ICONIFY_PREFIXES` or :data:`DENIED_PATTERN` (``google`` / ``noto``), and every
build calls it for each of them (:class:`DeniedSourceError`).

Every picture is rendered to ``size`` x ``size`` RGB (uint8) on white (alpha composited) and
stored as PNG bytes. The default is 64 px: the offline default X-encoder (``lite``,
:mod:`vljepa.config`) reads 64-px images, and 64 px is the largest single image emoji-datasource
ships, so larger sizes would only upscale the Apple / Twitter / Facebook pictures.

Output directory (written to ``.<name>.tmp-<pid>`` beside it, renamed into place when complete)::

    chunks/            litdata chunks (litdata.optimize, as vljepa/training/chunks.py writes):
                       one item per image, {"index": int, "id": str, "image": PNG bytes,
                       "caption": str (the first caption), "record": str (JSON manifest row)}
    manifest.jsonl     one row per image, in chunk order (see :func:`build`)
    failures.jsonl     images skipped, with the reason
    contact_sheet.png  samples per set (a row each, labelled with set, artist and count)
    corpus.json        summary, provenance (package@version, sha512, SHA-256), counts; last

Downloads are kept under ``<cache>/emoji_corpus/npm`` (``$VLJEPA_CACHE`` or ``~/.cache/vljepa``,
:func:`vljepa.data.cache.default_cache_dir`), so a re-run downloads nothing. Needs the ``npm``
client (to fetch) and the PyPI package ``resvg-py`` (to render SVGs).
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from .cache import default_cache_dir

FORMAT = "vljepa-emoji-corpus/1"
DEFAULT_SIZE = 64
CHUNK_FIELDS = ["index", "id", "image", "caption", "record"]
_CHUNK_FORMAT = ["int", "str", "bytes", "str", "str"]  # litdata's data_format for CHUNK_FIELDS


# ---------------------------------------------------------------- denylist (hard rule) ----

class DeniedSourceError(ValueError):
    """A source, package, Iconify set or file that the denylist refuses (Google / Noto)."""


DENIED_PACKAGES = frozenset({
    "emoji-datasource-google", "@iconify-json/noto", "@iconify-json/noto-v1",
    "noto-emoji", "@fontsource/noto-color-emoji", "@fontsource/noto-emoji",
    "@fontsource-variable/noto-emoji",
})
"""npm packages never fetched: Google's / Noto's emoji."""

DENIED_ICONIFY_PREFIXES = frozenset({
    "noto", "noto-v1",  # Noto Emoji (Google)
    # Google-made icon sets: not emoji, refused all the same rather than argued one by one
    "material-symbols", "material-symbols-light", "ic", "gcp",
})
"""Iconify set prefixes never rendered."""

DENIED_PATTERN = re.compile(r"google|noto", re.IGNORECASE)
"""Any name matching this (a source, package, prefix, set author, tarball member) is refused."""


def check_allowed(*names: str | None) -> None:
    """Raise :class:`DeniedSourceError` if any name is a denied package or Iconify prefix
    (``iconify:noto`` too) or matches :data:`DENIED_PATTERN`. ``None`` / empty names pass."""
    for name in names:
        if not name:
            continue
        bare = name.split(":", 1)[1] if name.startswith("iconify:") else name
        if name in DENIED_PACKAGES or bare in DENIED_PACKAGES or bare in DENIED_ICONIFY_PREFIXES \
                or DENIED_PATTERN.search(name):
            raise DeniedSourceError(
                f"{name!r} is denied: Google's and Noto's emoji are never used in training or "
                "evaluation (vljepa.data.emoji_corpus.DENIED_*)")


# ---------------------------------------------------------------- pinned packages ----

@dataclass(frozen=True)
class Package:
    """An npm package at a pinned version, with npm's sha512 ``integrity`` of its tarball."""
    name: str
    version: str
    integrity: str

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def filename(self) -> str:
        """The tarball name ``npm pack`` writes: ``@scope/name`` -> ``scope-name-<version>.tgz``."""
        return f"{self.name.lstrip('@').replace('/', '-')}-{self.version}.tgz"


PACKAGES: dict[str, Package] = {p.name: p for p in [
    Package("emoji-datasource", "16.0.0", "sha512-/qHKqK5Nr3+8zhgO6kHmF43Fm5C8HNn0AaFRIpgw8HF3+uF0V"
            "fc8jgLI1ZQS5ba1vBzksS8NBCjHejwLb2D/Sg=="),
    Package("emoji-datasource-apple", "16.0.0", "sha512-dVYjsK0FnCry9F+PBtnivhG2K0xdwlmqYaSgiUtz"
            "tUdAGPYiHYhZcVKvNBqC791g2qyEcFNTBO6utg4eQ3uLTw=="),
    Package("emoji-datasource-twitter", "16.0.0", "sha512-7F+uCuHH+7Qnrc15P5tnbvKkg9E6tlzi4MnT2"
            "uW1RlN4pLYTza6cP/dstIfSDMtpjFLWuZewWg8jBbuL2eyELQ=="),
    Package("emoji-datasource-facebook", "16.0.0", "sha512-b9ZxJdB7nMWGckH1vyCjPSosaa6MJYuojPPF"
            "iQ0LmDIZS8vlG454XKcmTFKrXIMAA72O4MRJMYFhvWI8pjyciQ=="),
    Package("@iconify-json/twemoji", "1.2.5", "sha512-uKpuIEV0v6K5BW3Mjdyl+XKFVAbbcPxAgifKvEMtZo"
            "UZB5+YiY5zaMm2uNNCxyXzAWU9yNLlj41WU6/mvgALsw=="),
    Package("@iconify-json/openmoji", "1.2.29", "sha512-vXdhkqcXVSO6suy+m9LbcUM3OdVyuNOtpV8/als/"
            "WqfkQIRxevL5Geb/g+6GH/Qwnq1OqksEmaDGTCmZ5nFKJQ=="),
    Package("@iconify-json/fluent-emoji", "1.2.7", "sha512-D8G6bKAyIsyxP1rzZtIWr/gg/fO4Rg1+DyCWl"
            "fqKK4h8W+4Em/Y0P6QYgJUQTlUcagzJvSyg+9OBv4hz4Hc/QA=="),
    Package("@iconify-json/fluent-emoji-flat", "1.2.6", "sha512-RY47RgPb47fYUiyrA64sIOL0+UU02s2"
            "9sXpNBbIQRBUlPlfNFTKUmZDERGuxDs/7yNGWqQYvuaSYM1M4fRXlUw=="),
    Package("@iconify-json/fluent-emoji-high-contrast", "1.2.6", "sha512-esqhZPpkrF7sNX3NsLoh8K"
            "W64okEr/bzko7WNnFP+qTJGAqDPDYjp0925yxuivXy3HtVQB8xhIKu3+Nq1byX5w=="),
    Package("@iconify/json", "2.2.535", "sha512-nAV60ACUSHwnsb6fsp+letHlNkrwO4vzBtcC6B4EDHErQQfe"
            "zk7E3nJdnwJjve6OCfMNO0uVT5Vrgna9/NCmXw=="),
    Package("@lobehub/fluent-emoji-3d", "1.1.0", "sha512-Wlq2lVStTnr8BDpIJ0pEnTKO4LuDxxqTEhTvRtD1D"
            "LRF0me7ogeRQjKoehDHXuVJ2Qaecgl5wRBv60lUAG3h7g=="),
    Package("emojibase-data", "17.0.0", "sha512-Yvgb5AWoHViHV/gq1qr5ZAarcBip+B27/ZLRsUJkbgAEaLlZ/"
            "fof9g882LTpmEpyhBNEC0m2SEmItljHsTygjA=="),
    Package("emojilib", "4.0.3", "sha512-KbWiYre9aRSaPbHrHZIz9zmoM+21LAsK1VFJtnTh1VCtWE/rNMDviGh"
            "QTmselFl95dhqtGlY22iH0leG5BuW0g=="),
]}
"""Every npm package a build may fetch, pinned (version and sha512 from the registry)."""

NAME_PACKAGES = ("emojibase-data", "emojilib")  # names / keywords / groups, every build


@dataclass(frozen=True)
class Source:
    """One image set.

    Attributes:
        key: the source's name on the command line ("apple", "twemoji", "iconify:mdi").
        set: the set's name in records and ids ("apple", "twemoji", "mdi").
        kind: "png" (emoji-datasource single images), "assets" (one image per code point
            sequence, ``package/assets/<hex>.webp``) or "iconify" (SVG bodies).
        package: the npm package (a key of :data:`PACKAGES`).
        artist: who drew it (sets of one design family share it: twemoji and the
            emoji-datasource Twitter PNGs are both "twitter"); ``None``: from the Iconify set's
            author.
        emoji: match icon names to CLDR emoji names when the set has no code point table.
        license: for PNG sets (Iconify sets carry their own).
    """
    key: str
    set: str
    kind: str
    package: str
    artist: str | None = None
    emoji: bool = False
    license: str | None = None


_DS_LICENSES = {  # from emoji-datasource's README
    "apple": "Copyright Apple Inc.; not licensed for commercial usage (emoji-datasource README)",
    "twitter": "CC-BY-4.0",
    "facebook": "Copyright Facebook, Inc.; no clear licensing (emoji-datasource README)",
}

SOURCES: dict[str, Source] = {s.key: s for s in [
    *(Source(a, a, "png", f"emoji-datasource-{a}", a, True, _DS_LICENSES[a])
      for a in ("apple", "twitter", "facebook")),
    Source("twemoji", "twemoji", "iconify", "@iconify-json/twemoji", "twitter", True),
    Source("openmoji", "openmoji", "iconify", "@iconify-json/openmoji", "openmoji", True),
    *(Source(p, p, "iconify", f"@iconify-json/{p}", "microsoft", True)
      for p in ("fluent-emoji-flat", "fluent-emoji-high-contrast", "fluent-emoji")),
    # Microsoft's Fluent Emoji as 3D renders (256-px WebP), skin tones included
    Source("fluent-emoji-3d", "fluent-emoji-3d", "assets", "@lobehub/fluent-emoji-3d",
           "microsoft", True, "MIT"),
]}
"""The named sources; any ``iconify:<prefix>`` of ``@iconify/json`` is a source too."""

# Artists of @iconify/json sets whose author name would be a poor key, and its emoji sets.
ICONIFY_ARTISTS = {"emojione": "emojione", "emojione-v1": "emojione",
                   "emojione-monotone": "emojione", "fxemoji": "mozilla",
                   "streamline-emojis": "streamline", "twemoji": "twitter",
                   "openmoji": "openmoji", "fluent-emoji": "microsoft",
                   "fluent-emoji-flat": "microsoft", "fluent-emoji-high-contrast": "microsoft"}
ICONIFY_EMOJI_SETS = frozenset(ICONIFY_ARTISTS)

PRESETS: dict[str, list[str]] = {
    "emoji": ["apple", "twitter", "facebook", "twemoji", "openmoji", "fluent-emoji-flat",
              "fluent-emoji-high-contrast", "fluent-emoji"],
    "emoji-extra": ["iconify:emojione", "iconify:emojione-v1", "iconify:fxemoji",
                    "iconify:streamline-emojis"],
    "icons": ["iconify:game-icons", "iconify:mdi", "iconify:healthicons"],
    # multi-colour illustrated sets (Iconify's palette sets, minus logos, flags and programming)
    "icons-color": [f"iconify:{p}" for p in (
        "icon-park", "streamline-color", "streamline-plump-color", "streamline-freehand-color",
        "streamline-flex-color", "streamline-sharp-color", "streamline-ultimate-color",
        "streamline-cyber-color", "streamline-kameleon-color", "streamline-stickies-color",
        "fluent-color", "glyphs-poly", "marketeq", "meteocons", "flat-color-icons", "flat-ui")],
    "emoji-3d": ["fluent-emoji-3d"],
}
"""Groups of sources by one name on the command line (``--sources emoji icons``)."""
DEFAULT_SOURCES = ("emoji",)


def resolve_sources(names: Iterable[str]) -> list[Source]:
    """Source / preset names -> sources, in order, without repeats.

    Raises: DeniedSourceError for a denied name (checked before anything else); ValueError for
    an unknown one."""
    out: dict[str, Source] = {}
    for name in names:
        check_allowed(name)
        for key in PRESETS.get(name, [name]):
            check_allowed(key)
            if key in SOURCES:
                src = SOURCES[key]
            elif key.startswith("iconify:") and re.fullmatch(r"[a-z0-9][a-z0-9-]*", key[8:]):
                prefix = key[8:]
                src = Source(key, prefix, "iconify", "@iconify/json", ICONIFY_ARTISTS.get(prefix),
                             prefix in ICONIFY_EMOJI_SETS)
            else:
                raise ValueError(f"unknown source {key!r}: one of {sorted(SOURCES)}, a preset "
                                 f"{sorted(PRESETS)} or iconify:<prefix> of @iconify/json")
            check_allowed(src.set, src.package)
            out.setdefault(src.key, src)
    return list(out.values())


# ---------------------------------------------------------------- downloads ----

class IntegrityError(ValueError):
    """A downloaded tarball whose sha512 is not the pinned one."""


def _digests(path: Path) -> tuple[str, str]:
    """(npm-style ``sha512-<base64>``, SHA-256 hex) of a file."""
    h512, h256 = hashlib.sha512(), hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h512.update(block)
            h256.update(block)
    return "sha512-" + base64.b64encode(h512.digest()).decode(), h256.hexdigest()


def fetch(package: Package, download_dir: str | os.PathLike) -> dict[str, Any]:
    """The package's tarball in ``download_dir`` (``npm pack``-ed once, kept), verified.

    npm's own cache is a temporary directory inside ``download_dir``, removed after the
    download (nothing is written elsewhere, nothing kept twice).

    Returns: provenance ``{"package", "version", "tarball", "bytes", "integrity", "sha256"}``.
    Raises: DeniedSourceError for a denied package; RuntimeError when ``npm`` is missing or
        ``npm pack`` fails (its message); IntegrityError when the tarball's sha512 is not the
        pinned one (a fresh download is removed, a kept one is named for deletion).
    """
    check_allowed(package.name)
    download_dir = Path(download_dir)
    path = download_dir / package.filename
    if not path.exists():
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("the emoji corpus fetches npm packages: install npm "
                               "(apt-get install npm)")
        download_dir.mkdir(parents=True, exist_ok=True)
        tmp = download_dir / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            env = {**os.environ, "npm_config_cache": str(tmp / ".npm"),
                   "npm_config_update_notifier": "false", "npm_config_fund": "false",
                   "npm_config_audit": "false"}
            r = subprocess.run([npm, "pack", package.spec, "--pack-destination", str(tmp),
                                "--ignore-scripts", "--json"], env=env, capture_output=True,
                               text=True, timeout=900, cwd=tmp)
            got = tmp / package.filename
            if r.returncode != 0 or not got.exists():
                raise RuntimeError(f"npm pack {package.spec} failed (exit {r.returncode}): "
                                   f"{(r.stderr or r.stdout).strip()[-800:]}")
            integrity, _ = _digests(got)
            if integrity != package.integrity:
                raise IntegrityError(f"npm pack {package.spec}: sha512 {integrity} is not the "
                                     f"pinned {package.integrity}")
            os.replace(got, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    integrity, sha256 = _digests(path)
    if integrity != package.integrity:
        raise IntegrityError(f"{path}: sha512 {integrity} is not the pinned {package.integrity} "
                             f"of {package.spec}; delete the file to download it again")
    return {"package": package.name, "version": package.version, "tarball": path.name,
            "bytes": path.stat().st_size, "integrity": integrity, "sha256": sha256}


def read_members(tarball: str | os.PathLike, want: Callable[[str], bool]) -> dict[str, bytes]:
    """The files of a ``.tgz`` whose member name (``package/...``) ``want`` accepts.

    Raises: DeniedSourceError when an accepted member's path is denied (a Google / Noto file)."""
    out = {}
    with tarfile.open(tarball, "r:gz") as tf:
        for m in tf:
            if m.isfile() and want(m.name):
                check_allowed(m.name)
                out[m.name] = tf.extractfile(m).read()
    return out


def _json(members: dict[str, bytes], name: str, default: Any = None) -> Any:
    data = members.get(f"package/{name}")
    if data is None:
        if default is not None:
            return default
        raise FileNotFoundError(f"package/{name} is not in the tarball")
    return json.loads(data)


# ---------------------------------------------------------------- names and keywords ----

def norm_hex(seq: str) -> str:
    """A code point sequence as upper-case hex without variation selectors:
    "1f44b-1F3FB" -> "1F44B-1F3FB", "00a9-fe0f" -> "00A9", "23-fe0f-20e3" -> "0023-20E3"."""
    cps = [int(p, 16) for p in re.split(r"[-_ ]", seq.strip()) if p]
    return "-".join(f"{c:04X}" for c in cps if c not in (0xFE0E, 0xFE0F))


def slug(text: str) -> str:
    """"Flag: Côte d'Ivoire" -> "flag-c-te-d-ivoire" (Iconify's icon-name style)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


_TONE_SUFFIX = re.compile(r"^(.*?)-(medium-light|medium-dark|light|medium|dark)(?:-skin-tone)?$")
_TONES = {"light": "1F3FB", "medium-light": "1F3FC", "medium": "1F3FD", "medium-dark": "1F3FE",
          "dark": "1F3FF"}  # the Fitzpatrick modifiers


@dataclass
class EmojiInfo:
    """What CLDR (emojibase) and emojilib say of one emoji (a normalised hex sequence)."""
    name: str  # CLDR label: "grinning face", "waving hand: light skin tone", "flag: Egypt"
    base: str  # the label of the emoji without skin tone: "waving hand"
    keywords: list[str]
    group: str  # CLDR group: "smileys & emotion"
    subgroup: str  # CLDR subgroup key: "face-smiling"


class EmojiNames:
    """Emoji names, keywords and groups by normalised hex (:func:`norm_hex`) and by name slug.

    Built from emojibase-data's ``en/data.json`` and ``en/messages.json`` (CLDR labels, tags,
    groups, skin tones) and ``meta/unicode-names.json`` (Unicode names, matched too), and
    emojilib's ``dist/emoji-en-US.json`` (keywords by relevance)."""

    def __init__(self, emojibase: dict[str, bytes], emojilib: dict[str, bytes]):
        data = _json(emojibase, "en/data.json")
        messages = _json(emojibase, "en/messages.json")
        groups = {g["order"]: g["message"] for g in messages["groups"]}
        subgroups = {g["order"]: g["key"] for g in messages["subgroups"]}
        lib = {}
        for char, words in _json(emojilib, "dist/emoji-en-US.json").items():
            h = norm_hex("-".join(f"{ord(c):X}" for c in char))
            lib[h] = [w.replace("_", " ") for w in words[1:]]  # words[0]: the name's slug
        self.by_hex: dict[str, EmojiInfo] = {}
        self.by_slug: dict[str, str] = {}
        for e in data:
            if e.get("group") is None and "tags" not in e:  # regional indicators, components
                continue
            h = norm_hex(e["hexcode"])
            keywords = _dedupe([*lib.get(h, []), *e.get("tags", [])], e["label"])
            group, sub = groups.get(e.get("group"), ""), subgroups.get(e.get("subgroup"), "")
            self._add(h, EmojiInfo(e["label"], e["label"], keywords, group, sub))
            for s in e.get("skins", []):
                self._add(norm_hex(s["hexcode"]),
                          EmojiInfo(s["label"], e["label"], keywords, group, sub))
        # Unicode character names ("CAT FACE WITH TEARS OF JOY"), which older sets use
        for h, name in _json(emojibase, "meta/unicode-names.json", {}).items():
            h = norm_hex(h)
            if h in self.by_hex:
                self.by_slug.setdefault(slug(name), h)
        self.by_compact = {}  # "alarmclock" (Firefox OS emoji's names) -> hex
        for sl, h in self.by_slug.items():
            self.by_compact.setdefault(sl.replace("-", ""), h)

    def _add(self, h: str, info: EmojiInfo) -> None:
        self.by_hex.setdefault(h, info)
        self.by_slug.setdefault(slug(info.name), h)

    def match_name(self, icon_name: str) -> str | None:
        """An Iconify emoji's name -> its hex: a CLDR label's slug ("grinning-face"), a Unicode
        name's ("cat-face-with-tears-of-joy"), one without hyphens (Firefox OS's "alarmclock"),
        "flag-for-<country>", and a skin tone suffix on any of these ("artist-dark",
        "bride-with-veil-light-skin-tone": the modifier after the first code point, when CLDR
        has that sequence); None if no name fits."""
        h = self._direct(icon_name)
        if h is not None:
            return h
        m = _TONE_SUFFIX.match(icon_name)
        if m:
            base = self._direct(m.group(1))
            if base is not None:
                first, *rest = base.split("-")
                tone = "-".join([first, _TONES[m.group(2)], *rest])
                return tone if tone in self.by_hex else None
        return None

    def _direct(self, name: str) -> str | None:
        if name.startswith("flag-for-"):
            name = "flag-" + name[len("flag-for-"):]
        return self.by_slug.get(name) or self.by_compact.get(name.replace("-", ""))


def _dedupe(words: Iterable[str], name: str) -> list[str]:
    out, seen = [], {name.lower()}
    for w in words:
        w = w.strip().lower()
        if w and w not in seen:
            seen.add(w)
            out.append(w)
    return out


# ---------------------------------------------------------------- captions ----

_STYLE_WORDS = frozenset({"outline", "outlined", "fill", "filled", "solid", "bold", "duotone",
                          "thin", "light", "regular", "sharp", "rounded", "round", "twotone",
                          "variant", "alt", "line", "lines", "off", "on"})


def icon_base(name: str) -> str:
    """An icon's name without trailing style words and numbers ("home outline" -> "home",
    "alarm 2" -> "alarm"): the unit that held-out names hold out, so a held-out "home" has no
    "home outline" in training. A name that would become empty is kept whole."""
    words = name.split()
    while len(words) > 1 and (words[-1] in _STYLE_WORDS or words[-1].isdigit()):
        words.pop()
    return " ".join(words)


def caption_text(name: str) -> str:
    """A CLDR label as caption text: "flag: Egypt" -> "flag of Egypt", "keycap: 1" ->
    "keycap 1", "waving hand: light skin tone" -> "waving hand, light skin tone"."""
    if name.startswith("flag: "):
        return "flag of " + name[6:]
    if name.startswith("keycap: "):
        return "keycap " + name[8:]
    return name.replace(": ", ", ")


def with_article(text: str) -> str:
    """"grinning face" -> "a grinning face", "owl" -> "an owl", "sparkles" -> "sparkles",
    "flag of Egypt" -> "the flag of Egypt" (a deterministic heuristic, not a grammar)."""
    first, last = text.split()[0], text.split()[-1].lower()
    if text.startswith("flag of "):
        return "the " + text
    low = first.lower()
    if re.fullmatch(r"\d+(st|nd|rd|th)", low):  # "1st place medal" -> "a 1st place medal"
        return ("an " if re.fullmatch(r"(8|11|18|8\d)\D*", low) else "a ") + text
    if first[0].isdigit() or (last.endswith("s") and not last.endswith(("ss", "us", "is"))):
        return text
    vowel = low[0] in "aeiou" and not low.startswith(("uni", "use", "usu", "uro", "one", "eu"))
    return ("an " if vowel or low.startswith(("hour", "honest")) else "a ") + text


_KEYWORD = re.compile(r"[a-z][a-z' -]*")


def make_captions(name: str, keywords: Sequence[str], kind: str) -> list[str]:
    """Two or three captions, deterministic: ["grinning face", "an emoji of a grinning face",
    "an emoji of a grinning face, smile, happy, joy"]; the third takes the first three
    keywords (source order) that are words and not words of the name, and is absent when
    there are none. ``kind`` "emoji" or "icon" names the picture."""
    text = caption_text(name)
    first = f"an {kind} of {with_article(text)}"
    name_words = set(re.findall(r"[a-z0-9']+", text.lower()))
    extra = [k for k in keywords
             if _KEYWORD.fullmatch(k) and not set(k.split()) <= name_words][:3]
    return [text, first] + ([f"{first}, {', '.join(extra)}"] if extra else [])


# ---------------------------------------------------------------- rendering ----

def _to_png(img, size: int) -> bytes:
    """A PIL image (any mode) -> PNG bytes of an RGB (size, size) image on white: alpha is
    composited over white first, then the result is resized (Lanczos) if it is not ``size``."""
    from PIL import Image

    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, rgba).convert("RGB")
    if rgb.size != (size, size):
        if rgb.width != rgb.height:
            raise ValueError(f"not square: {rgb.size}")
        rgb = rgb.resize((size, size), Image.LANCZOS)
    buf = io.BytesIO()
    rgb.save(buf, format="PNG")
    return buf.getvalue()


def render_png(data: bytes, size: int = DEFAULT_SIZE) -> bytes:
    """A PNG (emoji-datasource's 64-px RGBA images) -> PNG bytes, RGB (size, size) on white.
    Raises PIL's errors for an unreadable image, ValueError for a non-square one."""
    from PIL import Image

    return _to_png(Image.open(io.BytesIO(data)), size)


def iconify_svg(icon: dict[str, Any], defaults: dict[str, Any], size: int) -> str:
    """An Iconify icon (``body`` and optional ``left/top/width/height``, else the set's, else
    0 / 0 / 16 / 16) as a standalone SVG of ``size`` x ``size`` px; a non-square view box is
    centred (SVG's default ``xMidYMid meet``) and ``currentColor`` is black."""
    def get(key, default):
        return icon.get(key, defaults.get(key, default))
    box = f"{get('left', 0)} {get('top', 0)} {get('width', 16)} {get('height', 16)}"
    return ('<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
            f'width="{size}" height="{size}" viewBox="{box}" color="#000000">'
            f'{icon["body"]}</svg>')


def render_svg(svg: str, size: int = DEFAULT_SIZE) -> bytes:
    """An SVG -> PNG bytes, RGB (size, size) on white (rasterised by resvg-py).
    Raises: ImportError without resvg-py; ValueError (resvg's) for an SVG it cannot render."""
    from PIL import Image
    try:
        import resvg_py
    except ImportError as e:
        raise ImportError("rendering SVG icon sets needs the package 'resvg-py': "
                          "pip install resvg-py") from e
    png = resvg_py.svg_to_bytes(svg_string=svg, width=size, height=size)
    return _to_png(Image.open(io.BytesIO(bytes(png))), size)


# ---------------------------------------------------------------- items per source ----

@dataclass
class Item:
    """One picture before rendering: its manifest fields and its source data."""
    record: dict[str, Any]
    data: bytes | str  # PNG bytes (kind png) or an SVG document
    fmt: str  # "png" or "svg"


def _private_use(seq: str) -> bool:
    """Whether a hex sequence has a Private Use Area code point (icon fonts, OpenMoji's
    extras): such a code point names nothing."""
    return any(0xE000 <= c <= 0xF8FF or c >= 0xF0000
               for c in (int(p, 16) for p in re.split(r"[-_ ]", seq.strip()) if p))


def _record(src: Source, key: str, artist: str, kind: str, codepoints: str, icon: str, name: str,
            base: str, keywords: list[str], group: str, subgroup: str, source: str,
            license: str) -> dict[str, Any]:
    return {"id": f"{src.set}:{key}", "artist": artist, "set": src.set, "kind": kind,
            "codepoints": codepoints, "icon": icon, "name": name, "base": base,
            "captions": make_captions(name, keywords, kind), "keywords": keywords,
            "group": group, "subgroup": subgroup, "source": source, "license": license}


def png_items(src: Source, datasource: dict[str, bytes], images: dict[str, bytes],
              names: EmojiNames, source: str) -> Iterator[Item]:
    """emoji-datasource emoji (and their skin tone variations) that the artist drew itself
    (``has_img_<artist>``), in emoji-datasource's sort order."""
    entries = sorted(_json(datasource, "emoji.json"), key=lambda e: e["sort_order"])
    for e in entries:
        variants = [e, *(e.get("skin_variations") or {}).values()]
        for v in variants:
            if not v.get(f"has_img_{src.set}"):
                continue
            path = f"package/img/{src.set}/64/{v['image']}"
            h = norm_hex(v["unified"])
            info = names.by_hex.get(h)
            if info is None:  # not in CLDR via emojibase: emoji-datasource's own name
                name = (e.get("name") or e["short_name"].replace("_", " ")).lower()
                info = EmojiInfo(name, name, [], e.get("category", "").lower(),
                                 e.get("subcategory", ""))
            yield Item(_record(src, Path(v["image"]).stem, src.artist, "emoji", h, "",
                               info.name, info.base, info.keywords, info.group, info.subgroup,
                               source, src.license or ""),
                       images.get(path, b""), "png")


def asset_items(src: Source, images: dict[str, bytes], names: EmojiNames, source: str,
                skipped: list[dict[str, Any]]) -> Iterator[Item]:
    """A package's images named by code point sequence (``package/assets/1f44b-1f3fb.webp``),
    in file name order, named from CLDR (:class:`EmojiNames`); a file whose sequence CLDR does
    not name is listed in ``skipped``."""
    for path in sorted(images):
        stem = Path(path).name.split(".", 1)[0]
        try:
            h = norm_hex(stem)
        except ValueError:
            h = ""
        info = names.by_hex.get(h) if h else None
        if info is None:
            skipped.append({"id": f"{src.set}:{stem}", "source": source,
                            "reason": "no CLDR name for this file's code points"})
            continue
        yield Item(_record(src, stem, src.artist, "emoji", h, "", info.name, info.base,
                           info.keywords, info.group, info.subgroup, source, src.license or ""),
                   images[path], "png")


def iconify_items(src: Source, data: dict[str, Any], names: EmojiNames, source: str,
                  size: int, skipped: list[dict[str, Any]]) -> Iterator[Item]:
    """An Iconify set's visible icons, by name. ``data``: the set's IconifyJSON with ``info``,
    ``chars`` (hex -> icon) and ``categories`` (category -> icons) merged in. Hidden icons and
    icons with rotate / flip transforms are listed in ``skipped``; aliases (other names of
    the same icon) become keywords of their parent."""
    info = data.get("info", {})
    author = (info.get("author") or {}).get("name", "")
    check_allowed(src.set, data.get("prefix"), author, info.get("name"))
    artist = src.artist or slug(author) or src.set
    license = (info.get("license") or {}).get("spdx") or (info.get("license") or {}).get(
        "title", "")
    by_icon: dict[str, list[str]] = {}
    for h, icon in (data.get("chars") or {}).items():
        if not _private_use(h):  # icon fonts' code points (mdi's F01C9) are no Unicode
            by_icon.setdefault(icon, []).append(norm_hex(h))
    category: dict[str, str] = {}
    for cat, icons in sorted((data.get("categories") or {}).items()):
        for icon in icons:
            category.setdefault(icon, cat)
    aliases: dict[str, list[str]] = {}
    for alias, a in sorted((data.get("aliases") or {}).items()):
        if set(a) == {"parent"}:
            aliases.setdefault(a["parent"], []).append(alias.replace("-", " "))
    for icon_name in sorted(data["icons"]):
        icon = data["icons"][icon_name]
        if icon.get("hidden") or any(k in icon for k in ("rotate", "hFlip", "vFlip")):
            skipped.append({"id": f"{src.set}:{icon_name}", "source": source,
                            "reason": "hidden" if icon.get("hidden") else "transformed"})
            continue
        hexes = sorted(by_icon.get(icon_name, []))
        h = next((x for x in hexes if x in names.by_hex), None)
        if h is None and src.emoji and not hexes:
            h = names.match_name(icon_name)
        e = names.by_hex.get(h) if h else None
        cat = category.get(icon_name, info.get("category", ""))
        if e is not None:
            keywords = _dedupe([*e.keywords, *aliases.get(icon_name, [])], e.name)
            rec = _record(src, icon_name, artist, "emoji", h, f"{src.set}:{icon_name}", e.name,
                          e.base, keywords, e.group, e.subgroup, source, license)
        else:
            name = icon_name.replace("-", " ")
            cat_words = [w.strip().lower() for w in re.split(r" / |&|,", cat) if w.strip()]
            keywords = _dedupe([*aliases.get(icon_name, []), *cat_words], name)
            rec = _record(src, icon_name, artist, "icon", hexes[0] if hexes else "",
                          f"{src.set}:{icon_name}", name, icon_base(name), keywords,
                          cat.lower(), "", source, license)
        yield Item(rec, iconify_svg(icon, data, size), "svg")


def _iconify_data(src: Source, members: dict[str, bytes]) -> dict[str, Any]:
    """A set's IconifyJSON with info, chars and categories, from ``@iconify/json``
    (``json/<prefix>.json``) or an ``@iconify-json/<prefix>`` package (``icons.json`` +
    ``info.json``, ``chars.json``, ``metadata.json``)."""
    if src.package == "@iconify/json":
        return _json(members, f"json/{src.set}.json")
    data = _json(members, "icons.json")
    data["info"] = _json(members, "info.json", {})
    data["chars"] = _json(members, "chars.json", {})
    data["categories"] = _json(members, "metadata.json", {}).get("categories", {})
    return data


def _wanted(src: Source) -> Callable[[str], bool]:
    if src.kind == "png":
        return lambda m: m.startswith(f"package/img/{src.set}/64/")
    if src.kind == "assets":
        return lambda m: m.startswith("package/assets/") and m.endswith((".webp", ".png"))
    if src.package == "@iconify/json":
        return lambda m: m == f"package/json/{src.set}.json"
    return lambda m: m in {"package/icons.json", "package/info.json", "package/chars.json",
                           "package/metadata.json"}


# ---------------------------------------------------------------- build ----

def _spread(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n)."""
    return sorted({round(i * (n - 1) / max(1, k - 1)) for i in range(min(k, n))}) if n else []


SHOWCASE = ["1F600", "2764", "1F436", "1F355", "1F680", "1F44D", "1F308", "1F3B8", "1F98B",
            "1F34E", "26BD", "1F3E0"]  # grinning face, red heart, dog, pizza, rocket, ...


def contact_sheet(records: Sequence[dict[str, Any]], images: Sequence[bytes],
                  path: str | os.PathLike, per_set: int = 12, cell: int = 64) -> None:
    """A PNG with a row per set: its label (set, artist, image count) and ``per_set`` samples
    (the :data:`SHOWCASE` emoji it has, then images spread over the set), ``cell`` px each."""
    from PIL import Image, ImageDraw, ImageFont

    rows: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        rows.setdefault(r["set"], []).append(i)
    try:
        font = ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()

    def label(set_name: str, idx: list[int]) -> str:
        return f"{set_name} ({records[idx[0]]['artist']}, {len(idx):,})"
    widest = max(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(label(s, i), font=font)
                 for s, i in rows.items()) if cell < 60 else 0
    label_w, gap = max(260, int(widest) + 16), 4
    sheet = Image.new("RGB", (label_w + per_set * (cell + gap) + gap,
                              gap + len(rows) * (cell + gap)), (235, 235, 235))
    draw = ImageDraw.Draw(sheet)
    for row, (set_name, idx) in enumerate(rows.items()):
        y = gap + row * (cell + gap)
        by_hex = {records[i]["codepoints"]: i for i in idx if records[i]["kind"] == "emoji"}
        picks = [by_hex[h] for h in SHOWCASE if h in by_hex][:per_set]
        for j in _spread(len(idx), per_set * 2):
            if len(picks) >= per_set:
                break
            if idx[j] not in picks:
                picks.append(idx[j])
        r0 = records[idx[0]]
        if cell >= 60:  # three lines fit beside a picture
            draw.text((8, y + 8), set_name, fill=(0, 0, 0), font=font)
            draw.text((8, y + 28), f"artist {r0['artist']}", fill=(60, 60, 60), font=font)
            draw.text((8, y + 46), f"{len(idx):,} images", fill=(60, 60, 60), font=font)
        else:  # one line
            draw.text((8, y + cell // 2 - 8), label(set_name, idx), fill=(0, 0, 0), font=font)
        for k, i in enumerate(picks):
            im = Image.open(io.BytesIO(images[i])).convert("RGB")
            if im.size != (cell, cell):
                im = im.resize((cell, cell), Image.LANCZOS)
            sheet.paste(im, (label_w + gap + k * (cell + gap), y))
    sheet.save(path, format="PNG")


class _Items:
    """Rendered items by input index, for litdata.optimize (forked workers read the list)."""

    def __init__(self, records: list[dict[str, Any]], images: list[bytes]):
        self.records, self.images = records, images

    def __call__(self, i: int) -> dict[str, Any]:
        r = self.records[i]
        return {"index": i, "id": r["id"], "image": self.images[i], "caption": r["captions"][0],
                "record": json.dumps(r, ensure_ascii=False, sort_keys=True)}


def _write_chunks(records: list[dict[str, Any]], images: list[bytes], out: Path,
                  chunk_mb: int, min_chunks: int) -> None:
    """Items as litdata chunks in ``out`` (a new directory), in input order, checked after."""
    from litdata import StreamingDataset, optimize

    n = len(records)
    item_bytes = max(1, sum(len(b) for b in images) // n) + 512
    per_chunk = max(1, min(chunk_mb * 2**20 // item_bytes, math.ceil(n / min_chunks)))
    optimize(fn=_Items(records, images), inputs=list(range(n)), output_dir=str(out),
             chunk_size=per_chunk, num_workers=1, mode=None, start_method="fork",
             verbose=False, keep_data_ordered=True, reorder_files=False)
    config = json.loads((out / "index.json").read_text())["config"]
    if config["data_format"] != _CHUNK_FORMAT:
        raise RuntimeError(f"litdata stored the fields as {config['data_format']}, not "
                           f"{_CHUNK_FORMAT} (a caption that names a file in the working "
                           "directory?)")
    ds = StreamingDataset(str(out))
    if len(ds) != n:
        raise RuntimeError(f"{out} holds {len(ds)} items, not {n}")
    for i in sorted({0, n - 1, *random.Random(0).sample(range(n), min(n, 64))}):
        item = ds[i]
        if item["id"] != records[i]["id"] or item["image"] != images[i]:
            raise RuntimeError(f"{out} item {i} is {item['id']}, not {records[i]['id']}")


def _remove_stale(out: Path) -> None:
    """Delete ``.<name>.tmp-<pid>`` / ``.<name>.old-<pid>`` beside ``out`` left by builds
    that were killed (their process is gone)."""
    for p in out.parent.glob(f".{out.name}.*-*"):
        m = re.fullmatch(rf"\.{re.escape(out.name)}\.(tmp|old)-(\d+)", p.name)
        if m is None or not p.is_dir():
            continue
        try:
            os.kill(int(m.group(2)), 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except PermissionError:  # another user's live process
            pass


def _disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def build(out: str | os.PathLike, sources: Iterable[str] = DEFAULT_SOURCES,
          size: int = DEFAULT_SIZE, limit: int | None = None,
          cache_dir: str | os.PathLike | None = None, force: bool = False, chunk_mb: int = 64,
          min_chunks: int = 64, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Fetch, render and write the corpus to ``out`` (the layout in the module docstring).

    Manifest rows (``manifest.jsonl``, one per image, row i = chunk item i): ``index``, ``id``
    ("<set>:<key>": "apple:1f600", "twemoji:grinning-face", "mdi:home"), ``artist``, ``set``,
    ``kind`` ("emoji": a CLDR-named emoji; "icon": named by its icon id), ``codepoints``
    (upper-case hex sequence without FE0F, "1F44B-1F3FB"; "" for icons without a standard one:
    icon fonts' Private Use code points are dropped), ``icon``
    (Iconify "prefix:name"; "" for PNG sets), ``name`` (CLDR label or icon name), ``base``
    (the name without skin tone / icon style words: the unit :func:`split` holds out),
    ``captions`` (2-3 str, :func:`make_captions`), ``keywords``, ``group``, ``subgroup``,
    ``source`` ("package@version"), ``license``.

    Args:
        out: the output directory. It is built beside itself (``.<name>.tmp-<pid>``) and
            renamed into place when complete; an existing complete corpus (``corpus.json``) is
            kept and its summary returned unless ``force``.
        sources: source and preset names (:func:`resolve_sources`).
        size: image side, px (every image is RGB size x size).
        limit: at most this many images per source (the first in source order), for slices.
        cache_dir: the cache root (downloads in ``<cache_dir>/emoji_corpus/npm``); default
            :func:`vljepa.data.cache.default_cache_dir`.
        force: rebuild over an existing corpus.
        chunk_mb, min_chunks: largest chunk (MiB) and least chunk count (litdata gives whole
            chunks to ranks and workers), as in :func:`vljepa.training.chunks.convert`.
        log: progress lines (default: stderr).
    Returns: the summary also written to ``corpus.json`` (counts, provenance, failures, wall
        time, disk bytes).
    Raises: DeniedSourceError (denied source, before any download); ValueError (unknown source,
        size < 8, no image rendered); RuntimeError / IntegrityError from :func:`fetch`.
    """
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    t0 = time.time()
    out = Path(out)
    srcs = resolve_sources(sources)
    if size < 8:
        raise ValueError(f"size {size} px is too small")
    if (out / "corpus.json").exists() and not force:
        log(f"{out} already holds a corpus (corpus.json); --force rebuilds it")
        return json.loads((out / "corpus.json").read_text())
    download_dir = Path(cache_dir or default_cache_dir()) / "emoji_corpus" / "npm"

    packages = [*NAME_PACKAGES, *(["emoji-datasource"] if any(s.kind == "png" for s in srcs)
                                  else []), *dict.fromkeys(s.package for s in srcs)]
    provenance = {}
    for name in packages:
        provenance[name] = fetch(PACKAGES[name], download_dir)
        log(f"fetched {PACKAGES[name].spec} ({provenance[name]['bytes'] / 2**20:.1f} MiB, "
            f"sha256 {provenance[name]['sha256'][:16]}...)")
    tgz = {name: download_dir / PACKAGES[name].filename for name in packages}
    names = EmojiNames(read_members(tgz["emojibase-data"],
                                    lambda m: m in {"package/en/data.json",
                                                    "package/en/messages.json",
                                                    "package/meta/unicode-names.json"}),
                       read_members(tgz["emojilib"],
                                    lambda m: m == "package/dist/emoji-en-US.json"))
    datasource = read_members(tgz["emoji-datasource"], lambda m: m == "package/emoji.json") \
        if "emoji-datasource" in tgz else {}

    records: list[dict[str, Any]] = []
    images: list[bytes] = []
    failures: list[dict[str, Any]] = []
    per_set: dict[str, dict[str, Any]] = {}
    for src in srcs:
        t = time.time()
        pkg = PACKAGES[src.package]
        members = read_members(tgz[src.package], _wanted(src))
        skipped: list[dict[str, Any]] = []
        if src.kind == "png":
            items = png_items(src, datasource, members, names, pkg.spec)
        elif src.kind == "assets":
            items = asset_items(src, members, names, pkg.spec, skipped)
        else:
            items = iconify_items(src, _iconify_data(src, members), names, pkg.spec, size,
                                  skipped)
        n0 = len(records)
        for item in items:
            if limit is not None and len(records) - n0 >= limit:
                break
            try:
                if item.fmt == "png" and not item.data:
                    raise FileNotFoundError("image missing from the package")
                png = render_png(item.data, size) if item.fmt == "png" else \
                    render_svg(item.data, size)
            except Exception as e:  # a broken picture is skipped and counted, never fatal
                skipped.append({"id": item.record["id"], "source": pkg.spec,
                                "reason": f"{type(e).__name__}: {e}"[:300]})
                continue
            item.record["index"] = len(records)
            records.append(item.record)
            images.append(png)
        del members
        failures.extend(skipped)
        n = len(records) - n0
        per_set[src.set] = {"source": pkg.spec, "artist": records[-1]["artist"] if n else None,
                            "images": n, "skipped": len(skipped),
                            "seconds": round(time.time() - t, 1)}
        log(f"{src.key}: {n:,} images, {len(skipped):,} skipped, {time.time() - t:.1f} s")
    if not records:
        raise ValueError("no image rendered: nothing to write")

    _remove_stale(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        t = time.time()
        _write_chunks(records, images, tmp / "chunks", chunk_mb, min_chunks)
        log(f"chunks: {len(records):,} items, {time.time() - t:.1f} s")
        with open(tmp / "manifest.jsonl", "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps({"index": r.pop("index"), **r}, ensure_ascii=False) + "\n")
        with open(tmp / "failures.jsonl", "w", encoding="utf-8") as f:
            for r in failures:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        contact_sheet(records, images, tmp / "contact_sheet.png")
        summary = {
            "format": FORMAT, "size": size, "mode": "RGB", "background": "white",
            "sources": [s.key for s in srcs], "limit": limit,
            "images": len(records),
            "artists": len({r["artist"] for r in records}),
            "sets": len(per_set),
            "distinct_names": len({r["name"] for r in records}),
            "distinct_bases": len({r["base"] for r in records}),
            "emoji_images": sum(r["kind"] == "emoji" for r in records),
            "icon_images": sum(r["kind"] == "icon" for r in records),
            "captions": sum(len(r["captions"]) for r in records),
            "skipped": len(failures), "per_set": per_set,
            "packages": list(provenance.values()),
            "denylist": {"packages": sorted(DENIED_PACKAGES),
                         "iconify_prefixes": sorted(DENIED_ICONIFY_PREFIXES),
                         "pattern": DENIED_PATTERN.pattern},
            "disk_bytes": _disk_bytes(tmp),
            "seconds": round(time.time() - t0, 1),
        }
        (tmp / "corpus.json").write_text(json.dumps(summary, indent=1))  # last: complete
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


# ---------------------------------------------------------------- reading and splits ----

def load_manifest(path: str | os.PathLike) -> list[dict[str, Any]]:
    """A corpus's manifest rows (``path``: the corpus directory or its ``manifest.jsonl``)."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.jsonl"
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def open_chunks(corpus_dir: str | os.PathLike, **kwargs):
    """The corpus's chunks as a ``litdata.StreamingDataset`` (items as in the module
    docstring; ``image`` is PNG bytes, ``record`` the JSON manifest row). ``kwargs`` go to
    ``StreamingDataset`` (shuffle, seed, cache_dir, ...)."""
    from litdata import StreamingDataset

    return StreamingDataset(str(Path(corpus_dir) / "chunks"), **kwargs)


def read_images(corpus_dir: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> list[bytes]:
    """The PNG bytes of manifest ``rows`` (any subset, any order), read in one pass over the
    corpus's chunks."""
    wanted = {r["index"] for r in rows}
    png = {it["index"]: it["image"] for it in open_chunks(corpus_dir) if it["index"] in wanted}
    return [png[r["index"]] for r in rows]


def split(manifest: Sequence[dict[str, Any]] | str | os.PathLike,
          held_out_artist: str | None = None, held_out_name_fraction: float = 0.1,
          seed: int = 0) -> tuple[list[str], list[str]]:
    """Train / test image ids, holding out an artist and a fraction of the names.

    Names are held out by ``base`` (a held-out "waving hand" takes its skin tones, a held-out
    "home" icon its "home outline"): ``round(fraction x distinct bases)`` bases drawn by a
    seeded shuffle of the sorted bases. The test ids are every image of the held-out artist
    and every image of a held-out name (any artist); train ids are the rest, so no train
    record has the held-out artist, a held-out base or a held-out name. Both lists keep
    manifest order.

    Args:
        manifest: manifest rows, or a corpus directory / manifest path.
        held_out_artist: an ``artist`` value of the manifest, or None.
        held_out_name_fraction: in [0, 1).
        seed: the shuffle's seed.
    Raises: ValueError for an artist absent from the manifest or a fraction outside [0, 1).
    """
    rows = load_manifest(manifest) if isinstance(manifest, (str, os.PathLike)) else manifest
    if not 0 <= held_out_name_fraction < 1:
        raise ValueError(f"held_out_name_fraction must be in [0, 1), not {held_out_name_fraction}")
    artists = {r["artist"] for r in rows}
    if held_out_artist is not None and held_out_artist not in artists:
        raise ValueError(f"artist {held_out_artist!r} is not in the manifest: {sorted(artists)}")
    held, held_names = held_out_names(rows, held_out_name_fraction, seed)
    train, test = [], []
    for r in rows:
        out = r["artist"] == held_out_artist or r["base"] in held or r["name"] in held_names
        (test if out else train).append(r["id"])
    return train, test


def held_out_names(rows: Sequence[dict[str, Any]], fraction: float, seed: int = 0
                   ) -> tuple[set[str], set[str]]:
    """The bases :func:`split` holds out (``round(fraction x distinct bases)`` of them, by a
    seeded shuffle of the sorted bases) and every name of theirs."""
    bases = sorted({r["base"] for r in rows})
    random.Random(seed).shuffle(bases)
    held = set(bases[:round(len(bases) * fraction)])
    return held, {r["name"] for r in rows if r["base"] in held}


# ---------------------------------------------------------------- command line ----

def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def main(argv: list[str] | None = None) -> int:
    """``python -m vljepa.data.emoji_corpus {build,sources} ...``."""
    parser = argparse.ArgumentParser(prog="python -m vljepa.data.emoji_corpus",
                                     description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="fetch, render and write the corpus")
    b.add_argument("--out", required=True, help="output directory")
    b.add_argument("--sources", nargs="+", default=list(DEFAULT_SOURCES),
                   help=f"sources / presets: {sorted(SOURCES)}, {sorted(PRESETS)}, or "
                        "iconify:<prefix> (default: emoji)")
    b.add_argument("--limit", type=int, help="at most N images per source")
    b.add_argument("--size", type=int, default=DEFAULT_SIZE, help="image side, px (default 64)")
    b.add_argument("--cache-dir", help="cache root (default $VLJEPA_CACHE or ~/.cache/vljepa)")
    b.add_argument("--force", action="store_true", help="rebuild over an existing corpus")
    b.add_argument("--chunk-mb", type=int, default=64)
    b.add_argument("--min-chunks", type=int, default=64)
    sub.add_parser("sources", help="list the sources, presets and the denylist")
    sh = sub.add_parser("sheet", help="a contact sheet of a built corpus (a row per set)")
    sh.add_argument("corpus", help="the corpus directory")
    sh.add_argument("out", help="the PNG to write")
    sh.add_argument("--exclude-artists", nargs="*", default=[],
                    help="artists to leave out (e.g. those whose licence forbids reuse)")
    sh.add_argument("--per-set", type=int, default=12)
    sh.add_argument("--cell", type=int, default=64, help="px per picture")
    args = parser.parse_args(argv)
    if args.command == "sheet":
        rows = [r for r in load_manifest(args.corpus) if r["artist"] not in args.exclude_artists]
        contact_sheet(rows, read_images(args.corpus, rows), args.out, args.per_set, args.cell)
        return 0
    if args.command == "sources":
        print(json.dumps({"sources": {k: {"package": PACKAGES[s.package].spec, "artist": s.artist,
                                          "kind": s.kind} for k, s in SOURCES.items()},
                          "iconify_any": PACKAGES["@iconify/json"].spec, "presets": PRESETS,
                          "denied_packages": sorted(DENIED_PACKAGES),
                          "denied_iconify_prefixes": sorted(DENIED_ICONIFY_PREFIXES),
                          "denied_pattern": DENIED_PATTERN.pattern}, indent=1))
        return 0
    try:
        s = build(args.out, args.sources, args.size, args.limit, args.cache_dir, args.force,
                  args.chunk_mb, args.min_chunks)
    except DeniedSourceError as e:
        parser.error(str(e))
    disk = _disk_bytes(Path(args.out))
    print(f"{s['images']:,} images, {s['artists']} artists, {s['sets']} sets, "
          f"{s['distinct_names']:,} distinct names ({s['distinct_bases']:,} bases), "
          f"{s['skipped']:,} skipped; {s['seconds']:.0f} s; {_human(disk)} at {args.out}",
          file=sys.stderr)
    print(json.dumps({k: s[k] for k in ("images", "artists", "sets", "distinct_names",
                                        "distinct_bases", "skipped", "seconds")}
                     | {"disk_bytes": disk, "out": str(args.out)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
