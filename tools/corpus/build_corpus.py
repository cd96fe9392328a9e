#!/usr/bin/env python3
"""Build a multilingual en<->X parallel corpus from Debian's gettext catalogs.

For every package named in tools/corpus/packages.txt this script
  1. fetches the .deb with `apt-get download` into build/corpus/debs/ (a cache:
     a file whose name and SHA256 match what bookworm serves is not fetched again;
     nothing is installed into the system),
  2. reads the package's data archive (`dpkg-deb --fsys-tarfile`, the archive that
     `dpkg -x` unpacks) and parses, in memory, every gettext .mo catalog that sits in
     a `<lang>/LC_MESSAGES/` folder for one of the 10 languages below,
  3. turns each catalog entry into (English msgid, translation) pairs, cleans and
     filters them (rules in normalize()/keep_pair() and tools/corpus/README.md),
  4. splits them by a hash of the cleaned English string into train / valid / test.

Outputs
  build/corpus/train.tsv.gz    lang<TAB>english<TAB>target
  build/corpus/valid.tsv.gz    lang<TAB>english<TAB>target
  data/test/<lang>.tsv         english<TAB>target (sorted; at most TEST_CAP pairs)
  build/corpus/manifest.json   packages (exact versions, sizes, SHA256), counts

Usage: python3 tools/corpus/build_corpus.py [--repo DIR] [--per-package]
"""

import argparse
import collections
import gzip
import hashlib
import html
import io
import json
import os
import re
import struct
import subprocess
import sys
import tarfile
import time
import unicodedata

LANGS = ["de", "fr", "es", "it", "pt_BR", "ru", "uk", "sv", "ja", "zh_CN"]
# Folder names under which catalogs are read: the locale names exactly, plus the
# BCP-47 spellings that LibreOffice uses for its resource folders
# (/usr/lib/libreoffice/program/resource/pt-BR/LC_MESSAGES/*.mo).
LOCALE_DIRS = {l: l for l in LANGS}
LOCALE_DIRS.update({"pt-BR": "pt_BR", "zh-CN": "zh_CN"})

MAX_CHARS = 200          # pairs with a longer side (after cleaning) are dropped
BUCKETS = 10000          # sha1(english) -> bucket in [0, BUCKETS)
TEST_BUCKETS = 200       # buckets [0, 200): test   (2 %)
VALID_BUCKETS = 100      # buckets [200, 300): valid (1 %); the rest: train
TEST_CAP = 600           # committed test pairs per language (deterministic subsample)

# ---------------------------------------------------------------------------
# .mo parsing


def read_mo(data):
    """Yield (msgctxt or None, msgid, msgid_plural or None, [msgstr...], charset) from .mo bytes."""
    magic = data[:4]
    if magic == b"\xde\x12\x04\x95":
        end = "<"
    elif magic == b"\x95\x04\x12\xde":
        end = ">"
    else:
        raise ValueError("not a .mo file")
    _rev, n, o_off, t_off = struct.unpack(end + "4I", data[4:20])
    raw = []
    for i in range(n):
        olen, opos = struct.unpack(end + "2I", data[o_off + 8 * i:o_off + 8 * i + 8])
        tlen, tpos = struct.unpack(end + "2I", data[t_off + 8 * i:t_off + 8 * i + 8])
        raw.append((data[opos:opos + olen], data[tpos:tpos + tlen]))
    charset = "utf-8"
    for k, v in raw:
        if k == b"":  # header entry
            m = re.search(rb"charset=([A-Za-z0-9_\-]+)", v)
            if m and m.group(1).lower() not in (b"charset", b"utf-8", b"utf8"):
                charset = m.group(1).decode("ascii")
            break
    for k, v in raw:
        if k == b"":
            continue  # the header (empty msgid) is never a pair
        try:
            ks = k.decode(charset)
            vs = v.decode(charset)
        except (UnicodeDecodeError, LookupError):
            continue
        ctxt = None
        if "\x04" in ks:
            ctxt, ks = ks.split("\x04", 1)
        parts = ks.split("\x00")
        msgid = parts[0]
        plural = parts[1] if len(parts) > 1 else None
        yield ctxt, msgid, plural, vs.split("\x00"), charset


def entry_pairs(ctxt, msgid, plural, msgstrs):
    """Raw (english, target) pairs of one catalog entry (before cleaning)."""
    if ctxt in ("NAME OF TRANSLATORS", "EMAIL OF TRANSLATORS") or msgid in (
            "translator-credits", "translator_credits", "Your names", "Your emails"):
        return []  # translator names/e-mails, not translations
    out = []
    if msgstrs and msgstrs[0]:
        out.append((msgid, msgstrs[0]))
    if plural is not None:
        if len(msgstrs) > 1:
            if msgstrs[1]:
                out.append((plural, msgstrs[1]))
        elif msgstrs and msgstrs[0]:
            out.append((plural, msgstrs[0]))  # nplurals=1 (ja, zh_CN): one form for every n
    return out


# ---------------------------------------------------------------------------
# cleaning

_WS = re.compile(r"\s+")
# CJK-style mnemonic suffix, e.g. "ファイル(_F)", "打开(&O)", "保存(~S)"; also full-width parentheses
_CJK_MNEMONIC = re.compile(r"\s*[(（][_&~]([A-Za-z0-9])[)）]")
_FORMAT = re.compile(
    r"%(\d+\$)?[-+ #0'I]*(\*|\d+)?(\.(\*|\d+))?(hh|h|ll|l|L|q|j|z|Z|t|I64|I32)?[a-zA-Z%]"  # printf/strftime
    r"|%\([A-Za-z0-9_]+\)[a-z]"      # python %(name)s
    r"|%[0-9]+"                       # Qt %1
    r"|\{[A-Za-z0-9_.:!]*\}"          # {0} {name}
    r"|\$\{?[A-Za-z_][A-Za-z0-9_]*\}?"  # $VAR ${VAR}
    r"|<[^<>]*>"                      # markup tags
    r"|&[A-Za-z]+;|&#[0-9]+;")       # entities
_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(\s[^<>]*)?/?>")  # markup such as <b>, </span>, <br/>
_IDENT_ONLY = re.compile(r"^[A-Za-z][\w.-]*:[\w:.-]*$")  # e.g. "default:LTR", "calendar:week_start:0"


def normalize(s):
    """Unicode NFC, every whitespace run (newlines and tabs included) to one space, stripped."""
    s = unicodedata.normalize("NFC", s)
    return _WS.sub(" ", s).strip()


def _mark_positions(s, mark):
    """Positions of `mark` used as a keyboard mnemonic candidate in s."""
    if mark == "&":  # not an entity (&amp;), not an escaped "&&"
        pat = r"(?<!&)&(?![A-Za-z]+;|#[0-9]+;)(?=[^\W_])"
    elif mark == "~":  # not "~~", not a Lisp format directive such as "~a" or "~s" (Audacity's Nyquist)
        pat = r"(?<!~)~(?=[^\W_])(?![A-Za-z](?:\W|$))"
    else:  # "_": not part of "__"
        pat = r"(?<!_)_(?=[^\W_])"
    return [m.start() for m in re.finditer(pat, s)]


def _strip_side(s, other):
    s = _CJK_MNEMONIC.sub("", s)
    for mark in ("_", "&", "~"):
        pos = _mark_positions(s, mark)
        if len(pos) != 1 or s.count(mark) != 1:
            continue  # no mark, or ambiguous: keep the string as it is
        i = pos[0]
        if i > 0 and (s[i - 1].isalnum() or s[i - 1] in "_&~"):
            # inside a word: a mnemonic ("Re_load", "E~xport") unless the same word stands in
            # the other side verbatim, which makes it an identifier ("cap_init", "AT_SECURE")
            a = i
            while a > 0 and (s[a - 1].isalnum() or s[a - 1] in "_&~"):
                a -= 1
            b = i + 1
            while b < len(s) and (s[b].isalnum() or s[b] in "_&~"):
                b += 1
            if re.search(r"(?<![\w&~])" + re.escape(s[a:b]) + r"(?![\w&~])", other):
                continue
        s = s[:i] + s[i + 1:]
    return s


def strip_mnemonics(en, tgt):
    """Remove keyboard-accelerator marks (GTK `_`, Qt/KDE `&`, LibreOffice `~`) from a pair.

    Each side is handled on its own. A mark is removed only where it is unambiguous: the string
    has exactly one such character, followed by a letter or digit, and it either starts a word
    ("_Open", "Size _1:", "&Macro") or sits inside a word that does not appear verbatim in the
    other side (so "Re_load" loses its mark, but "cap_init" kept as is by the translator stays).
    CJK-style suffixes such as "ファイル(_F)" or "打开(&O)" are always removed.
    """
    return _strip_side(en, tgt), _strip_side(tgt, en)


def has_words(s):
    """True if s has a letter once format specifiers, markup and entities are removed."""
    rest = _FORMAT.sub(" ", s)
    return any(unicodedata.category(c).startswith("L") for c in rest)


def clean_pair(en, tgt):
    """Cleaned (en, tgt), or None when the pair is dropped."""
    en, tgt = normalize(en), normalize(tgt)
    if not en or not tgt:
        return None
    en, tgt = strip_mnemonics(en, tgt)
    if not _TAG.search(en) and not _TAG.search(tgt):
        # plain text (no markup): decode entities, "Date &amp; Time" -> "Date & Time"
        en, tgt = html.unescape(en), html.unescape(tgt)
    en, tgt = normalize(en), normalize(tgt)
    if not en or not tgt or en == tgt:
        return None
    if len(en) > MAX_CHARS or len(tgt) > MAX_CHARS:
        return None
    if not has_words(en) or not has_words(tgt):
        return None
    if _IDENT_ONLY.match(en):
        return None
    return en, tgt


# ---------------------------------------------------------------------------
# packages


def read_package_list(path):
    pkgs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                pkgs.append(line)
    return pkgs


def fetch(pkgs, debdir):
    """apt-get download whatever is not cached; return {pkg: (path, size, sha256)}."""
    os.makedirs(debdir, exist_ok=True)
    out = subprocess.run(["apt-get", "download", "--print-uris"] + pkgs, check=True,
                         capture_output=True, text=True).stdout
    want = {}
    for line in out.splitlines():
        m = re.match(r"'([^']+)' (\S+) (\d+) SHA256:([0-9a-f]+)", line)
        if m:
            fname = m.group(2)
            want[fname.split("_", 1)[0]] = (fname, int(m.group(3)), m.group(4))
    missing = [p for p in pkgs if p not in want]
    if missing:
        sys.exit(f"apt-get knows no candidate for: {' '.join(missing)}")

    def ok(fname, sha):
        p = os.path.join(debdir, fname)
        if not os.path.exists(p):
            return False
        with open(p, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest() == sha

    missing = [p for p in pkgs if not ok(want[p][0], want[p][2])]
    if missing:
        print(f"downloading {len(missing)} package(s) ...", flush=True)
        subprocess.run(["apt-get", "download"] + missing, cwd=debdir, check=True,
                       stdout=subprocess.DEVNULL)
        bad = [p for p in missing if not ok(want[p][0], want[p][2])]
        if bad:
            sys.exit(f"checksum mismatch after download: {bad}")
    return {p: (os.path.join(debdir, want[p][0]), want[p][1], want[p][2]) for p in pkgs}


def catalogs(deb):
    """Yield (lang, member path, .mo bytes) for the wanted catalogs inside a .deb."""
    tar_bytes = subprocess.run(["dpkg-deb", "--fsys-tarfile", deb], check=True,
                               capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tf:
        for m in tf:
            if not m.isfile() or not m.name.endswith(".mo"):
                continue
            parts = m.name.split("/")
            if len(parts) < 3 or parts[-2] != "LC_MESSAGES":
                continue
            lang = LOCALE_DIRS.get(parts[-3])
            if lang:
                yield lang, m.name, tf.extractfile(m).read()


# ---------------------------------------------------------------------------
# split


def split_key(en):
    """The English string reduced to lower-case letters and digits, so that near-identical
    sources ("Open", "Open...", "_Open:", "open") always land in the same split."""
    return "".join(c for c in en.casefold() if c.isalnum())


def bucket(en):
    k = split_key(en) or en
    return int.from_bytes(hashlib.sha1(k.encode("utf-8")).digest()[:8], "big") % BUCKETS


def split_of(en):
    b = bucket(en)
    if b < TEST_BUCKETS:
        return "test"
    if b < TEST_BUCKETS + VALID_BUCKETS:
        return "valid"
    return "train"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--repo", default=os.path.abspath(os.path.join(here, "..", "..")))
    ap.add_argument("--packages", default=os.path.join(here, "packages.txt"))
    ap.add_argument("--per-package", action="store_true",
                    help="also print how many unique pairs each package adds (in list order)")
    args = ap.parse_args()
    t0 = time.time()
    out_dir = os.path.join(args.repo, "build", "corpus")
    test_dir = os.path.join(args.repo, "data", "test")
    os.makedirs(out_dir, exist_ok=True)
    os.makedirs(test_dir, exist_ok=True)

    pkgs = read_package_list(args.packages)
    debs = fetch(pkgs, os.path.join(out_dir, "debs"))

    pairs = {l: {} for l in LANGS}      # lang -> {(en, tgt): first package}
    stats = collections.Counter()
    manifest_pkgs = []
    for p in pkgs:
        path, size, sha = debs[p]
        version = subprocess.run(["dpkg-deb", "-f", path, "Version"], check=True,
                                 capture_output=True, text=True).stdout.strip()
        added = collections.Counter()
        n_mo = collections.Counter()
        for lang, name, data in catalogs(path):
            n_mo[lang] += 1
            try:
                entries = list(read_mo(data))
            except (ValueError, struct.error) as e:
                print(f"  skip {p}:{name}: {e}", file=sys.stderr)
                continue
            for ctxt, msgid, plural, msgstrs, _cs in entries:
                for en, tgt in entry_pairs(ctxt, msgid, plural, msgstrs):
                    stats["raw"] += 1
                    c = clean_pair(en, tgt)
                    if c is None:
                        stats["dropped"] += 1
                        continue
                    if c in pairs[lang]:
                        stats["duplicate"] += 1
                        continue
                    pairs[lang][c] = p
                    added[lang] += 1
        manifest_pkgs.append({"package": p, "version": version, "file": os.path.basename(path),
                              "size": size, "sha256": sha, "catalogs": dict(n_mo),
                              "new_pairs": dict(added)})
        line = f"  {p:34s} {version:28s} {size / 1e6:6.2f} MB  {sum(n_mo.values()):4d} .mo"
        if args.per_package:
            line += "  +" + " ".join(f"{l}:{added[l]}" for l in LANGS)
        print(line, flush=True)

    # split by the English side only
    split_pairs = {s: {l: [] for l in LANGS} for s in ("train", "valid", "test")}
    for l in LANGS:
        for (en, tgt) in pairs[l]:
            split_pairs[split_of(en)][l].append((en, tgt))

    def key(pair, lang):
        return hashlib.sha1(f"{lang}\t{pair[0]}\t{pair[1]}".encode("utf-8")).hexdigest()

    counts = {}
    for s in ("train", "valid"):
        with gzip.GzipFile(os.path.join(out_dir, f"{s}.tsv.gz"), "wb", mtime=0) as gz:
            f = io.TextIOWrapper(gz, encoding="utf-8", newline="\n")
            for l in LANGS:
                rows = sorted(split_pairs[s][l], key=lambda pr: key(pr, l))  # shuffled, reproducible
                for en, tgt in rows:
                    f.write(f"{l}\t{en}\t{tgt}\n")
            f.flush()
            f.detach()
    for l in LANGS:
        test = split_pairs["test"][l]
        kept = sorted(test, key=lambda pr: key(pr, l))[:TEST_CAP]
        kept.sort()
        with open(os.path.join(test_dir, f"{l}.tsv"), "w", encoding="utf-8", newline="\n") as f:
            for en, tgt in kept:
                f.write(f"{en}\t{tgt}\n")
        counts[l] = {"train": len(split_pairs["train"][l]), "valid": len(split_pairs["valid"][l]),
                     "test_all": len(test), "test": len(kept), "total": len(pairs[l])}

    print("\nlang     total    train   valid  test(all)  test(kept)")
    for l in LANGS:
        c = counts[l]
        print(f"{l:6s} {c['total']:7d} {c['train']:8d} {c['valid']:7d} {c['test_all']:9d} {c['test']:10d}")
    tot = {k: sum(c[k] for c in counts.values()) for k in ("total", "train", "valid", "test_all", "test")}
    print(f"{'all':6s} {tot['total']:7d} {tot['train']:8d} {tot['valid']:7d} {tot['test_all']:9d} {tot['test']:10d}")
    en_all = {en for l in LANGS for (en, _t) in pairs[l]}
    print(f"unique English sources: {len(en_all)}; raw pairs {stats['raw']}, dropped by filters "
          f"{stats['dropped']}, duplicates {stats['duplicate']}")
    total_mb = sum(m["size"] for m in manifest_pkgs) / 1e6
    print(f"{len(pkgs)} packages, {total_mb:.1f} MB of .deb; {time.time() - t0:.0f} s")

    with open(os.path.join(out_dir, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump({"suite": "bookworm", "packages": manifest_pkgs, "counts": counts,
                   "split": {"hash": "sha1(split_key(English), utf-8): first 8 bytes big-endian % 10000; split_key = casefolded letters and digits only",
                             "test_buckets": [0, TEST_BUCKETS],
                             "valid_buckets": [TEST_BUCKETS, TEST_BUCKETS + VALID_BUCKETS],
                             "test_cap": TEST_CAP},
                   "max_chars": MAX_CHARS, "unique_english": len(en_all)},
                  f, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main()
