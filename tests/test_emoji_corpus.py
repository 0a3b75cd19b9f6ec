"""The emoji / icon caption corpus (vljepa.data.emoji_corpus): a tiny real build from two
Iconify sets (needs npm and the npm registry: skipped without them), chunk round trips, the
Google / Noto denylist, and held-out splits. Everything is written under pytest's tmp dirs."""
from __future__ import annotations

import io
import json
import shutil

import pytest

from vljepa.data import emoji_corpus as ec

TINY_SOURCES = ["twemoji", "fluent-emoji-flat"]
TINY_LIMIT = 20


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """(corpus dir, cache dir, summary) of a 2-set, 40-image build."""
    root = tmp_path_factory.mktemp("emoji_corpus")
    cache = root / "cache"
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed: the emoji corpus fetches npm packages")
    try:  # the smallest pinned package: is the registry reachable?
        ec.fetch(ec.PACKAGES["emojilib"], cache / "emoji_corpus" / "npm")
    except RuntimeError as e:
        pytest.skip(f"the npm registry is unreachable: {e}")
    mp = pytest.MonkeyPatch()
    mp.setenv("DATA_OPTIMIZER_CACHE_FOLDER", str(root / "litdata"))
    mp.setenv("DATA_OPTIMIZER_DATA_CACHE_FOLDER", str(root / "litdata-data"))
    try:
        summary = ec.build(root / "corpus", TINY_SOURCES, size=64, limit=TINY_LIMIT,
                           cache_dir=cache, log=lambda s: None)
    finally:
        mp.undo()
    return root / "corpus", cache, summary


def test_a_tiny_build_from_two_sets(tiny):
    from PIL import Image

    out, cache, s = tiny
    assert s["format"] == ec.FORMAT
    assert (s["images"], s["sets"], s["artists"]) == (2 * TINY_LIMIT, 2, 2)
    rows = ec.load_manifest(out)
    assert [r["index"] for r in rows] == list(range(len(rows)))
    assert {r["set"] for r in rows} == {"twemoji", "fluent-emoji-flat"}
    assert {r["artist"] for r in rows} == {"twitter", "microsoft"}
    assert s["distinct_names"] == len({r["name"] for r in rows})
    for r in rows:
        assert set(r) >= {"id", "artist", "set", "kind", "codepoints", "icon", "name", "base",
                          "captions", "keywords", "group", "source", "license"}
        assert 2 <= len(r["captions"]) <= 3 and r["captions"][0]
        assert r["source"] in {"@iconify-json/twemoji@1.2.5",
                               "@iconify-json/fluent-emoji-flat@1.2.6"}
    emoji = [r for r in rows if r["kind"] == "emoji"]
    assert emoji and all(r["codepoints"] and r["group"] for r in emoji)
    # provenance: every tarball's pinned sha512 and its SHA-256
    pk = {p["package"]: p for p in s["packages"]}
    assert set(pk) == {"emojibase-data", "emojilib", "@iconify-json/twemoji",
                       "@iconify-json/fluent-emoji-flat"}
    for name, p in pk.items():
        assert p["integrity"] == ec.PACKAGES[name].integrity and len(p["sha256"]) == 64
    assert json.loads((out / "corpus.json").read_text()) == s
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.height >= 2 * 64
    assert not list(out.parent.glob(".corpus.tmp-*"))  # built aside, renamed into place
    kept = list((cache / "emoji_corpus" / "npm").iterdir())  # the tarballs alone
    assert kept and all(p.suffix == ".tgz" for p in kept)


def test_records_round_trip_through_the_chunks_bit_exactly(tiny):
    import numpy as np
    from PIL import Image

    out, cache, _ = tiny
    rows = ec.load_manifest(out)
    ds = ec.open_chunks(out)
    assert len(ds) == len(rows)
    # rendered again, independently, from the tarball
    src = ec.SOURCES["twemoji"]
    tgz = cache / "emoji_corpus" / "npm" / ec.PACKAGES[src.package].filename
    data = ec._iconify_data(src, ec.read_members(tgz, ec._wanted(src)))
    for i in (0, 7, TINY_LIMIT - 1):
        item, row = ds[i], rows[i]
        assert item["id"] == row["id"] and item["index"] == i
        assert item["caption"] == row["captions"][0]
        assert json.loads(item["record"]) == row
        name = row["icon"].split(":", 1)[1]
        png = ec.render_svg(ec.iconify_svg(data["icons"][name], data, 64), 64)
        assert item["image"] == png  # the same bytes
        im = Image.open(io.BytesIO(item["image"]))
        assert (im.mode, im.size) == ("RGB", (64, 64))
        assert np.array_equal(np.asarray(im), np.asarray(Image.open(io.BytesIO(png))))
    assert {ds[i]["id"] for i in range(len(ds))} == {r["id"] for r in rows}


def test_a_rerun_keeps_the_corpus_and_a_changed_tarball_is_refused(tiny, tmp_path):
    out, cache, s = tiny
    stamp = (out / "corpus.json").stat().st_mtime_ns
    assert ec.build(out, TINY_SOURCES, limit=TINY_LIMIT, cache_dir=cache,
                    log=lambda s: None) == s
    assert (out / "corpus.json").stat().st_mtime_ns == stamp  # kept, not rebuilt
    pkg = ec.PACKAGES["emojilib"]
    ec.fetch(pkg, cache / "emoji_corpus" / "npm")  # verified again, no download
    bad = tmp_path / pkg.filename
    data = bytearray((cache / "emoji_corpus" / "npm" / pkg.filename).read_bytes())
    data[100] ^= 1
    bad.write_bytes(bytes(data))
    with pytest.raises(ec.IntegrityError, match="delete the file"):
        ec.fetch(pkg, tmp_path)


@pytest.mark.parametrize("name", ["google", "emoji-datasource-google", "noto", "noto-v1",
                                  "iconify:noto", "iconify:noto-v1", "@iconify-json/noto",
                                  "@iconify-json/noto-v1", "iconify:material-symbols",
                                  "Noto Color Emoji"])
def test_the_denylist_refuses_google_and_noto(name, tmp_path):
    with pytest.raises(ec.DeniedSourceError):
        ec.resolve_sources([name])
    with pytest.raises(ec.DeniedSourceError):  # before anything is downloaded
        ec.build(tmp_path / "out", ["twemoji", name], cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


def test_the_denylist_guards_packages_files_and_set_authors(tmp_path):
    with pytest.raises(ec.DeniedSourceError):
        ec.fetch(ec.Package("emoji-datasource-google", "16.0.0", "sha512-x"), tmp_path)
    for path in ("package/img/google/64/1f600.png", "package/json/noto.json",
                 "package/json/noto-v1.json"):
        with pytest.raises(ec.DeniedSourceError):
            ec.check_allowed(path)
    # an Iconify set by Google under another prefix is refused by its author
    data = {"prefix": "x", "info": {"name": "X", "author": {"name": "Google Inc"}},
            "icons": {"a": {"body": "<path d='M0 0h16v16H0z'/>"}}}
    src = ec.Source("iconify:x", "x", "iconify", "@iconify/json")
    with pytest.raises(ec.DeniedSourceError):
        list(ec.iconify_items(src, data, None, "@iconify/json@0", 64, []))
    # no named source or preset is denied, and none of them is Google's or Noto's
    srcs = ec.resolve_sources([*ec.SOURCES, *ec.PRESETS])
    assert not any(ec.DENIED_PATTERN.search(s.package + s.set) for s in srcs)
    assert not any(ec.DENIED_PATTERN.search(p) for p in ec.PACKAGES)


def _synthetic_manifest():
    rows = []
    for artist, sets in (("apple", ["apple"]), ("twitter", ["twitter", "twemoji"]),
                         ("microsoft", ["fluent-emoji-flat"])):
        for s in sets:
            for b in ("grinning face", "waving hand", "red heart", "dog face", "pizza",
                      "rocket", "house", "owl", "cat", "tree"):
                names = [b] + ([f"{b}: {t} skin tone" for t in ("light", "dark")]
                               if b == "waving hand" else [])
                for n in names:
                    rows.append({"id": f"{s}:{n}", "artist": artist, "set": s, "name": n,
                                 "base": b})
    rows += [{"id": f"mdi:{n}", "artist": "pictogrammers", "set": "mdi", "name": n,
              "base": ec.icon_base(n)} for n in ("home", "home outline", "home variant",
                                                 "alarm", "alarm 2", "cat")]
    return rows


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_held_out_names_and_artist_never_appear_in_train(seed):
    rows = _synthetic_manifest()
    train, test = ec.split(rows, held_out_artist="twitter", held_out_name_fraction=0.3,
                           seed=seed)
    by_id = {r["id"]: r for r in rows}
    assert sorted(train + test) == sorted(by_id) and not set(train) & set(test)
    tr, te = [by_id[i] for i in train], [by_id[i] for i in test]
    assert train and all(r["artist"] != "twitter" for r in tr)
    held_bases = {r["base"] for r in te if r["artist"] != "twitter"}
    assert held_bases  # some names are held out...
    assert not held_bases & {r["base"] for r in tr}  # ...and never seen in training
    assert not {r["name"] for r in te if r["base"] in held_bases} & {r["name"] for r in tr}
    assert {r["id"] for r in rows if r["artist"] == "twitter"} <= set(test)
    assert ec.split(rows, "twitter", 0.3, seed) == (train, test)  # deterministic


def test_split_edge_cases_and_errors(tiny):
    rows = _synthetic_manifest()
    train, test = ec.split(rows, held_out_name_fraction=0.0)
    assert test == [] and len(train) == len(rows)
    train, test = ec.split(rows, held_out_artist="apple", held_out_name_fraction=0.0)
    assert {r["id"] for r in rows if r["artist"] == "apple"} == set(test)
    with pytest.raises(ValueError, match="not in the manifest"):
        ec.split(rows, held_out_artist="google")
    with pytest.raises(ValueError):
        ec.split(rows, held_out_name_fraction=1.0)
    out, _, _ = tiny  # a real manifest, read from its directory
    train, test = ec.split(out, held_out_artist="microsoft", held_out_name_fraction=0.2)
    real = {r["id"]: r for r in ec.load_manifest(out)}
    assert all(real[i]["artist"] == "twitter" for i in train)
    assert not {real[i]["name"] for i in train} & {real[i]["name"] for i in test
                                                   if real[i]["artist"] == "twitter"}


def test_caption_splits_keep_held_out_names_and_artist_out_of_training(tiny, tmp_path):
    """vljepa.data.captions.corpus_splits / emoji_corpus (data=emoji_corpus): no train or val
    record has the held-out artist or a held-out name; every test record sits in its cell; a
    subsample for the scaling curve keeps the test cells; the datasets carry the pictures."""
    from vljepa.data import captions

    out, _, _ = tiny
    rows = ec.load_manifest(out)
    sp = captions.corpus_splits(out, held_out_artist="microsoft", held_out_names=0.3,
                                val_names=0.2, seed=0)
    held_bases, held_names = ec.held_out_names(rows, 0.3, 0)
    seen = sp["train"] + sp["val"]
    assert sp["train"] and sp["val"] and sp["test"]
    assert all(r["artist"] != "microsoft" for r in seen)
    assert not {r["name"] for r in seen} & held_names
    assert not {r["base"] for r in seen} & held_bases
    assert not {r["name"] for r in sp["val"]} & {r["name"] for r in sp["train"]}
    trained = {r["name"] for r in sp["train"]}
    for r in sp["test"]:
        new_artist, new_name = r["artist"] == "microsoft", r["name"] in held_names
        assert r["cell"] == ("new name / new artist" if new_artist and new_name else
                             "new name / seen artist" if new_name else "seen name / new artist")
        assert new_name or r["name"] in trained
    # the code points training shows (eval/zeroshot.py --exclude-corpus): every training
    # picture's first code point, and no held-out name's that training lacks
    from vljepa.metrics import corpus_codepoints
    cps = corpus_codepoints(out, held_out_artist="microsoft", held_out_names=0.3, val_names=0.2)
    def first(rows):
        return {int(r["codepoints"].split("-")[0], 16) for r in rows if r["codepoints"]}
    assert first(sp["train"]) and first(sp["train"]) <= cps
    assert not cps & (first(sp["test"] + sp["val"]) - first(sp["train"]))
    small = captions.corpus_splits(out, "microsoft", 0.3, 0.2, seed=0, max_train_images=3)
    assert len(small["train"]) == 3 and small["test"] == sp["test"] and small["val"] == sp["val"]
    ds = captions.emoji_corpus("test", out, "microsoft", 0.3, 0.2)
    assert ds["name"] == [r["name"] for r in sp["test"]] == ds["caption"]
    assert ds["cell"] == [r["cell"] for r in sp["test"]]
    assert ds[0]["image"]["bytes"][:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FileNotFoundError, match="emoji_corpus build"):
        captions.emoji_corpus("train", tmp_path / "none")
    with pytest.raises(ValueError, match="holds 64-px pictures"):
        captions.emoji_corpus("train", out, image_size=128)
    with pytest.raises(ValueError, match="held_out_names"):
        captions.emoji_corpus("train", out, test_fraction=0.2)


def test_train_only_sets_add_training_pictures_and_leave_val_and_test_as_they_were(tiny, tmp_path):
    """corpus_splits(train_only_sets=...): the split of the other sets is the one a corpus
    without the train-only sets has, and no train picture has a val or held-out name or base."""
    from vljepa.data import captions

    out, _, _ = tiny
    rows = ec.load_manifest(out)
    core = tmp_path / "core"
    core.mkdir()
    (core / "manifest.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows if r["set"] != "twemoji"), encoding="utf-8")
    kw = dict(held_out_artist=None, held_out_names=0.3, val_names=0.2, seed=0)
    alone = captions.corpus_splits(core, **kw)
    sp = captions.corpus_splits(out, train_only_sets=["twemoji"], **kw)
    assert sp["val"] == alone["val"] and sp["test"] == alone["test"]
    extra = [r for r in sp["train"] if r["set"] == "twemoji"]
    assert sp["train"][:len(alone["train"])] == alone["train"] and extra
    unseen = {r[k] for r in sp["val"] + sp["test"] for k in ("name", "base")}
    assert not {r[k] for r in sp["train"] for k in ("name", "base")} & unseen
    dropped = [r for r in rows if r["set"] == "twemoji" and r not in extra]
    assert all(r["name"] in unseen or r["base"] in unseen for r in dropped)
    assert captions.corpus_splits(out, train_only_sets=["emoji"], **kw)["test"] == []  # a preset
    with pytest.raises(ValueError, match="not in the corpus"):
        captions.corpus_splits(out, train_only_sets=["noto"], **kw)
    with pytest.raises(ValueError, match="held-out artist"):
        captions.corpus_splits(out, "twitter", 0.3, 0.2, train_only_sets=["twemoji"])


def test_captions_and_names():
    assert ec.make_captions("grinning face", ["face", "smile", "happy", ":D", "joy", "grin"],
                            "emoji") == [
        "grinning face", "an emoji of a grinning face",
        "an emoji of a grinning face, smile, happy, joy"]
    assert ec.make_captions("flag: Egypt", [], "emoji") == ["flag of Egypt",
                                                            "an emoji of the flag of Egypt"]
    assert ec.make_captions("owl", ["bird"], "icon")[1:] == ["an icon of an owl",
                                                             "an icon of an owl, bird"]
    assert ec.make_captions("sparkles", [], "emoji")[1] == "an emoji of sparkles"
    assert ec.caption_text("waving hand: light skin tone") == "waving hand, light skin tone"
    assert ec.norm_hex("00a9-fe0f") == "00A9" and ec.norm_hex("23-fe0f-20e3") == "0023-20E3"
    assert ec.icon_base("home outline") == "home" and ec.icon_base("alarm 2") == "alarm"
    assert ec.icon_base("outline") == "outline"
    assert ec.Package("@iconify-json/twemoji", "1.2.5", "").filename == \
        "iconify-json-twemoji-1.2.5.tgz"


def test_emoji_names_from_cldr_unicode_names_and_skin_tones():
    def member(obj):
        return json.dumps(obj).encode()

    data = [{"label": "waving hand", "hexcode": "1F44B", "tags": ["hello", "wave"], "group": 1,
             "subgroup": 0, "skins": [{"label": "waving hand: dark skin tone",
                                       "hexcode": "1F44B-1F3FF", "group": 1, "subgroup": 0}]},
            {"label": "cat with tears of joy", "hexcode": "1F639", "tags": ["cat"], "group": 0,
             "subgroup": 0},
            {"label": "flag: Egypt", "hexcode": "1F1EA-1F1EC", "tags": ["flag"], "group": 2,
             "subgroup": 1}]
    messages = {"groups": [{"key": "s", "message": "smileys & emotion", "order": 0},
                           {"key": "p", "message": "people & body", "order": 1},
                           {"key": "f", "message": "flags", "order": 2}],
                "subgroups": [{"key": "hand-fingers-open", "order": 0},
                              {"key": "country-flag", "order": 1}]}
    names = ec.EmojiNames(
        {"package/en/data.json": member(data), "package/en/messages.json": member(messages),
         "package/meta/unicode-names.json": member({"1F639": "CAT FACE WITH TEARS OF JOY"})},
        {"package/dist/emoji-en-US.json": member({"👋": ["waving_hand", "hands", "hello"]})})
    info = names.by_hex["1F44B-1F3FF"]
    assert (info.name, info.base, info.group) == ("waving hand: dark skin tone", "waving hand",
                                                  "people & body")
    assert info.keywords == ["hands", "hello", "wave"]  # emojilib first, then CLDR tags
    assert names.match_name("waving-hand") == "1F44B"
    assert names.match_name("waving-hand-dark") == "1F44B-1F3FF"  # Fluent's style
    assert names.match_name("waving-hand-dark-skin-tone") == "1F44B-1F3FF"
    assert names.match_name("waving-hand-light") is None  # CLDR has no such sequence here
    assert names.match_name("cat-face-with-tears-of-joy") == "1F639"  # the Unicode name
    assert names.match_name("wavinghand") == "1F44B"  # Firefox OS's style
    assert names.match_name("flag-for-egypt") == "1F1EA-1F1EC"
    assert names.match_name("rocket") is None


def test_asset_images_are_named_by_their_code_points():
    """``fluent-emoji-3d`` (kind "assets"): one WebP per code point sequence, FE0F ignored,
    named from CLDR; a file CLDR does not name is skipped and listed."""
    from PIL import Image

    def member(obj):
        return json.dumps(obj).encode()

    data = [{"label": "waving hand", "hexcode": "1F44B", "tags": ["wave"], "group": 0,
             "subgroup": 0, "skins": [{"label": "waving hand: dark skin tone",
                                       "hexcode": "1F44B-1F3FF", "group": 0, "subgroup": 0}]},
            {"label": "copyright", "hexcode": "00A9", "tags": ["c"], "group": 0, "subgroup": 0}]
    messages = {"groups": [{"key": "p", "message": "people & body", "order": 0}],
                "subgroups": [{"key": "hand-fingers-open", "order": 0}]}
    names = ec.EmojiNames({"package/en/data.json": member(data),
                           "package/en/messages.json": member(messages)},
                          {"package/dist/emoji-en-US.json": member({})})
    buf = io.BytesIO()
    Image.new("RGBA", (256, 256), (200, 120, 40, 255)).save(buf, format="WEBP")
    files = {f"package/assets/{n}.webp": buf.getvalue()
             for n in ("1f44b", "1f44b-1f3ff", "00a9-fe0f", "e000")}
    src = ec.resolve_sources(["emoji-3d"])[0]
    assert (src.set, src.artist, src.kind) == ("fluent-emoji-3d", "microsoft", "assets")
    assert ec._wanted(src)("package/assets/1f44b.webp")
    assert not ec._wanted(src)("package/README.md")
    skipped = []
    items = list(ec.asset_items(src, files, names, "@lobehub/fluent-emoji-3d@1.1.0", skipped))
    got = {i.record["codepoints"]: i.record["name"] for i in items}
    assert got == {"1F44B": "waving hand", "1F44B-1F3FF": "waving hand: dark skin tone",
                   "00A9": "copyright"}
    assert [s["id"] for s in skipped] == ["fluent-emoji-3d:e000"]
    png = ec.render_png(items[0].data, 64)  # WebP in, 64-px RGB PNG out
    assert Image.open(io.BytesIO(png)).size == (64, 64)


def test_leftovers_of_killed_builds_are_removed(tmp_path):
    import os

    dead, live = tmp_path / ".corpus.tmp-999999999", tmp_path / f".corpus.tmp-{os.getpid()}"
    for d in (dead, live):
        d.mkdir()
    (tmp_path / ".other.tmp-999999999").mkdir()
    ec._remove_stale(tmp_path / "corpus")
    assert not dead.exists() and live.exists() and (tmp_path / ".other.tmp-999999999").exists()
