"""Folder importers: audio files + transcripts on disk -> manifest rows (absolute paths; sources stay put).

- `ljspeech`: `metadata.csv` (`id|text|normalized text`) + `wavs/<id>.<audio>`; one speaker (`speaker`,
  default "LJ"); the normalised text unless `text="original"`.
- `libritts`: `<speaker>/<chapter>/<id>.<audio>` with `<id>.normalized.txt` / `<id>.original.txt` beside it
  (the chapter's `.trans.tsv` / `.book.tsv` are expected and left alone).
- `librispeech`: `<speaker>/<chapter>/<speaker>-<chapter>-<n>.<audio>` + one `<speaker>-<chapter>.trans.txt`
  per chapter (`<utterance id> <TEXT>` a line). SRC is a subset folder, e.g. `LibriSpeech/train-clean-100`.
- `pairs` (through `auto`): a plain folder of `name.<audio>` + `name.txt` (UTF-8); one speaker (`speaker`,
  default the folder's name).
- `auto`: `detect_layout` picks one of the four from what the folder holds, or a UserError names them.

libritts and librispeech take genders from `speakers.tsv` (READER, GENDER, ...) or `SPEAKERS.TXT`
(`ID | SEX | ...`) in SRC or its parent, if present.

`<audio>` is any suffix that soundfile decodes here (`readable_suffixes()`: .wav .flac .ogg .opus .mp3
.aiff ...); soundfile is what `prepare`, `annotate` and `features` read audio with. Each audio file taken
is opened by its header (`sf.info`; its samples are decoded once, by `prepare`): one that doesn't open is
rejected as `unreadable_audio`. Nothing under SRC is skipped silently: apart from the rows, the layout's
own text files and the documentation at its top (README*, LICENSE*, SPEAKERS*, CHAPTERS*, ...), each file
gets a reject line: `missing_text` (audio without a transcript), `audio_not_found` (a transcript without
its audio), `bad_layout` (audio in the wrong place), `duplicate_id` (a second audio file of one id),
`unsupported_audio` (.m4a, .aac, ... that soundfile can't decode: convert them), `not_audio` (the rest).
The output folder is left out when it sits inside SRC. One folder listing is held in memory at a time.
"""
from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from pathlib import Path

from tristage.errors import UserError
from tristage.importers.common import ImportWriter

LAYOUTS = {
    "ljspeech": "metadata.csv + wavs/<id>.<audio>",
    "libritts": "<speaker>/<chapter>/<id>.<audio> + <id>.normalized.txt",
    "librispeech": "<speaker>/<chapter>/<speaker>-<chapter>-<n>.<audio> + <speaker>-<chapter>.trans.txt",
    "pairs": "a plain folder of name.<audio> + name.txt",
}
# soundfile's format name -> the suffixes of its files (most common first: the preferred file of one id)
_FORMAT_SUFFIXES = {"WAV": (".wav",), "FLAC": (".flac",), "OGG": (".ogg", ".oga"), "MP3": (".mp3",),
                    "AIFF": (".aiff", ".aif"), "CAF": (".caf",), "W64": (".w64",), "RF64": (".rf64",),
                    "AU": (".au",)}
# audio that people record or download, whether soundfile decodes it or not
KNOWN_AUDIO = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".mp4", ".wma", ".aiff",
               ".aif", ".caf", ".amr", ".webm", ".mka", ".wv", ".ape", ".3gp")
_DOCS = ("README", "LICENSE", "LICENCE", "COPYING", "NOTE", "CHANGES", "CHANGELOG", "SPEAKERS", "CHAPTERS",
         "BOOKS", "READER_BOOK")
_DOC_SUFFIXES = ("", ".txt", ".md", ".rst", ".tsv", ".csv", ".pdf", ".html")
LIBRITTS_TEXT = (".normalized.txt", ".original.txt")


@functools.cache
def readable_suffixes() -> tuple[str, ...]:
    """The audio suffixes soundfile (this libsndfile) decodes, preferred first."""
    import soundfile as sf

    formats = sf.available_formats()
    out = [s for fmt, sufs in _FORMAT_SUFFIXES.items() if fmt in formats for s in sufs]
    if "OGG" in formats and "OPUS" in sf.available_subtypes("OGG"):
        out.insert(out.index(".oga") + 1, ".opus")
    return tuple(out)


def _suffix(name: str) -> str:
    return os.path.splitext(name)[1].lower()


def is_audio(name: str) -> bool:
    return _suffix(name) in readable_suffixes()


def probe(path: Path) -> str | None:
    """None when soundfile opens the file's header and finds samples; else why not (one line)."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception as exc:  # any failure to open is the file's fault
        return (str(exc).splitlines() or [type(exc).__name__])[0][:300]
    if info.samplerate <= 0 or info.frames <= 0:
        return f"no samples ({info.frames} frames at {info.samplerate} Hz)"
    return None


def _is_doc(name: str) -> bool:
    stem, suf = os.path.splitext(name)
    return suf.lower() in _DOC_SUFFIXES and stem.upper().startswith(_DOCS)


def _audio_stems(files: list[str]) -> dict[str, list[str]]:
    """stem -> the decodable audio files with that stem, preferred suffix first."""
    order = {s: i for i, s in enumerate(readable_suffixes())}
    stems: dict[str, list[str]] = {}
    for name in files:
        if is_audio(name):
            stems.setdefault(os.path.splitext(name)[0], []).append(name)
    for names in stems.values():
        names.sort(key=lambda n: order[_suffix(n)])
    return stems


def _unsupported_stems(files: list[str]) -> set[str]:
    return {os.path.splitext(n)[0] for n in files if _suffix(n) in KNOWN_AUDIO and not is_audio(n)}


def _unsupported(names: list[str]) -> str | None:
    """The first of `names` that is audio soundfile can't decode (.m4a, ...), if any."""
    return next((n for n in names if _suffix(n) in KNOWN_AUDIO and not is_audio(n)), None)


def _take(w: ImportWriter, rel: Path, names: list[str]) -> str:
    """The preferred file of one id; the others each get a `duplicate_id` line."""
    for extra in names[1:]:
        w.reject(str(rel / extra), "duplicate_id", f"{names[0]} is used for this id")
    return names[0]


def _line_audio(w: ImportWriter, where: str, audio: list[str] | None, siblings: list[str], used: set[str],
                rel: Path, missing: str) -> str | None:
    """The audio file of a transcript line's id (LJSpeech's metadata.csv, LibriSpeech's .trans.txt):
    the preferred of `audio` (its decodable files; the others get a `duplicate_id` line the first time
    the id is seen), marked used. None after the line's reject: only undecodable audio among
    `siblings` (the files with the id's stem), or none at all (`missing` says where it was looked for)."""
    if not audio:
        bad = _unsupported(siblings)
        if bad:
            used.add(bad)
            _other(w, where, bad, "")
        else:
            w.reject(where, "audio_not_found", missing)
        return None
    name = audio[0] if audio[0] in used else _take(w, rel, audio)
    used.update(audio)
    return name


def _other(w: ImportWriter, where: str, name: str, expected: str) -> None:
    """A file no entry uses: unsupported audio or not audio at all."""
    suf = _suffix(name)
    if suf in KNOWN_AUDIO and not is_audio(name):
        import soundfile as sf

        w.reject(where, "unsupported_audio", f"{name}: soundfile (libsndfile {sf.__libsndfile_version__}) "
                 f"can't decode {suf} files; convert them, e.g. ffmpeg -i x{suf} x.flac")
    else:
        w.reject(where, "not_audio", f"neither audio ({' '.join(readable_suffixes())}) nor {expected}")


def _folders(root: Path, w: ImportWriter, skip: set[Path],
             rel: Path = Path()) -> Iterator[tuple[Path, Path, list[str]]]:
    """(folder, its path under the first root, its file names sorted) for root and every folder under it,
    depth first in sorted order. Paths in `skip` (the import's own output) are left out; symlinked folders
    are not followed and entries that are not files are rejected, so nothing is passed over silently."""
    try:
        with os.scandir(root) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        w.reject(str(rel), "bad_layout", f"cannot list the folder: {exc}")
        return
    files, dirs = [], []
    for e in entries:
        if Path(e.path) in skip:
            continue
        if e.is_dir(follow_symlinks=False):
            dirs.append(e.name)
        elif e.is_file():
            files.append(e.name)
        elif e.is_dir():
            w.reject(str(rel / e.name), "bad_layout", "a symlink to a folder: not followed")
        else:
            w.reject(str(rel / e.name), "not_audio", "not a regular file (a broken link?)")
    yield root, rel, files
    for d in dirs:
        yield from _folders(root / d, w, skip, rel / d)


def output_paths(w: ImportWriter, src: Path) -> set[Path]:
    """What the import writes, to leave out of the walk when `--out` sits inside SRC."""
    return {w.out, w.manifest, w._tmp, w.out / "rejects.jsonl"} - {src}


def speaker_genders(src: Path) -> dict[str, str]:
    """speaker -> female / male from `speakers.tsv` (tab separated, a header) or `SPEAKERS.TXT`
    (`ID | SEX | ...`, `;` comments) in src or its parent."""
    for folder in (src, src.parent):
        for name, sep, skip in (("speakers.tsv", "\t", 1), ("SPEAKERS.TXT", "|", 0),
                                ("SPEAKERS.txt", "|", 0)):
            path = folder / name
            if not path.is_file():
                continue
            genders = {}
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines()[skip:]:
                cols = line.split(sep)
                if line.startswith(";") or len(cols) < 2:
                    continue
                sex = cols[1].strip().upper()
                if sex in ("F", "M"):
                    genders[cols[0].strip()] = "female" if sex == "F" else "male"
            return genders
    return {}


# -- LJSpeech ------------------------------------------------------------------------------------

def import_ljspeech(src: Path, w: ImportWriter, speaker: str, text: str, language: str | None) -> None:
    meta = src / "metadata.csv" if src.is_dir() else src
    if not meta.is_file():
        raise UserError(f"import ljspeech: {meta} not found (expected metadata.csv with id|text|normalized)")
    root, wavs = meta.parent, meta.parent / "wavs"
    skip = output_paths(w, root)
    listing: dict[str, list[str]] = {}  # stem -> every file in wavs/ with that stem
    # no wavs/ reads as an empty one: each line then says audio_not_found
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        with os.scandir(wavs) as it:
            for name in sorted(e.name for e in it if e.is_file() and Path(e.path) not in skip):
                listing.setdefault(os.path.splitext(name)[0], []).append(name)
    covered: set[str] = set()  # files in wavs/ that a metadata line took or rejected
    with open(meta, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if line.strip():
                _ljspeech_line(w, f"{meta.name}:{n}", line, text, wavs, listing, covered, speaker, language)
    _ljspeech_strays(w, meta, listing, covered, skip)


def _ljspeech_line(w: ImportWriter, where: str, line: str, text: str, wavs: Path,
                   listing: dict[str, list[str]], covered: set[str], speaker: str,
                   language: str | None) -> None:
    """One metadata.csv line `id|text|normalized`: a row, or a reject naming the line."""
    parts = line.split("|")
    if len(parts) < 2 or not parts[0].strip():
        w.reject(where, "bad_line", line)
        return
    uid = parts[0].strip()
    said = parts[2] if text == "normalized" and len(parts) > 2 and parts[2].strip() else parts[1]
    if not said.strip():
        w.reject(where, "missing_text", uid)
        return
    names = listing.get(uid, [])
    name = _line_audio(w, where, _audio_stems(names).get(uid), names, covered, Path("wavs"),
                       str(wavs / f"{uid}.wav"))
    if name is None:
        return
    why = probe(wavs / name)
    if why:
        w.reject(where, "unreadable_audio", f"wavs/{name}: {why}")
        return
    w.add({"id": uid, "audio": str(wavs / name), "text": said.strip(), "speaker": speaker,
           "language": language}, where)


def _ljspeech_strays(w: ImportWriter, meta: Path, listing: dict[str, list[str]], covered: set[str],
                     skip: set[Path]) -> None:
    """The files no metadata line took: audio without a line, other files, anything outside wavs/."""
    root, wavs = meta.parent, meta.parent / "wavs"
    expected = "metadata.csv, wavs/<id>.<audio>"
    for stem, names in listing.items():
        for name in names:
            if name in covered:
                continue
            if is_audio(name):
                w.reject(f"wavs/{name}", "missing_text", f"no line for {stem} in {meta.name}")
            else:
                _other(w, f"wavs/{name}", name, expected)
    for folder, rel, files in _folders(root, w, skip | {meta}):
        if folder == wavs:
            continue
        for name in files:
            if rel == Path() and _is_doc(name):
                continue
            where = str(rel / name)
            if is_audio(name):
                w.reject(where, "bad_layout", "expected wavs/<id>.<audio>")
            else:
                _other(w, where, name, expected)


# -- LibriTTS ------------------------------------------------------------------------------------

def import_libritts(src: Path, w: ImportWriter, text: str, language: str | None) -> None:
    if not src.is_dir():
        raise UserError(f"import libritts: {src} is not a folder of <speaker>/<chapter>/<id>.<audio>")
    genders = speaker_genders(src)
    other = "original" if text == "normalized" else "normalized"
    for folder, rel, files in _folders(src, w, output_paths(w, src)):
        names, used = set(files), set()
        for stem, audio in _audio_stems(files).items():
            name = _take(w, rel, audio)
            used.update(audio)
            where = str(rel / name)
            txts = [f"{stem}.{kind}.txt" for kind in (text, other) if f"{stem}.{kind}.txt" in names]
            used.update(txts)
            if len(rel.parts) != 2:
                w.reject(where, "bad_layout", "expected <speaker>/<chapter>/<id>.<audio>")
                continue
            said = None
            for txt in txts:
                said = (folder / txt).read_text(encoding="utf-8", errors="replace").strip()
                if said:
                    break
            if not said:
                w.reject(where, "missing_text", f"{txts[0]} is empty" if txts else f"no {stem}.{text}.txt")
                continue
            why = probe(folder / name)
            if why:
                w.reject(where, "unreadable_audio", why)
                continue
            spk = rel.parts[0]
            w.add({"id": stem, "audio": str(folder / name), "text": said, "speaker": spk,
                   "gender": genders.get(spk), "language": language}, where)
        unsupported = _unsupported_stems(files)
        for name in files:
            if name in used or (not rel.parts and _is_doc(name)):
                continue
            if name.endswith(LIBRITTS_TEXT):
                stem = name.rsplit(".", 2)[0]
                # a transcript without audio: one line per id (on the .normalized.txt when both are there)
                if stem not in unsupported and not (name.endswith(".original.txt")
                                                    and f"{stem}.normalized.txt" in names):
                    w.reject(str(rel / name), "audio_not_found", f"no {stem}.<audio> beside it")
            elif len(rel.parts) == 2 and name.endswith((".trans.tsv", ".book.tsv")):
                continue
            else:
                _other(w, str(rel / name), name, "<id>.normalized.txt / <id>.original.txt")


# -- LibriSpeech ---------------------------------------------------------------------------------

def import_librispeech(src: Path, w: ImportWriter, language: str | None) -> None:
    if not src.is_dir():
        raise UserError(f"import librispeech: {src} is not a folder of <speaker>/<chapter>/<id>.<audio>")
    genders = speaker_genders(src)
    for folder, rel, files in _folders(src, w, output_paths(w, src)):
        stems = _audio_stems(files)
        used: set[str] = set()
        for trans in (n for n in files if n.endswith(".trans.txt")):
            used.add(trans)
            if len(rel.parts) != 2:
                w.reject(str(rel / trans), "bad_layout",
                         "expected <speaker>/<chapter>/<speaker>-<chapter>.trans.txt")
                continue
            spk = rel.parts[0]
            with open(folder / trans, encoding="utf-8", errors="replace") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    where = f"{rel / trans}:{n}"
                    uid, _, said = line.strip().partition(" ")
                    if not said.strip():
                        w.reject(where, "missing_text", uid)
                        continue
                    name = _line_audio(w, where, stems.get(uid),
                                       [x for x in files if os.path.splitext(x)[0] == uid], used, rel,
                                       f"no {uid}.<audio> in {rel}")
                    if name is None:
                        continue
                    why = probe(folder / name)
                    if why:
                        w.reject(where, "unreadable_audio", f"{name}: {why}")
                        continue
                    w.add({"id": uid, "audio": str(folder / name), "text": said.strip(), "speaker": spk,
                           "gender": genders.get(spk), "language": language}, where)
        for name in files:
            if name in used or (not rel.parts and _is_doc(name)):
                continue
            where = str(rel / name)
            if is_audio(name) and len(rel.parts) == 2:
                w.reject(where, "missing_text", f"no line for {os.path.splitext(name)[0]} in a .trans.txt")
            elif is_audio(name):
                w.reject(where, "bad_layout", "expected <speaker>/<chapter>/<speaker>-<chapter>-<n>.<audio>")
            else:
                _other(w, where, name, "<speaker>-<chapter>.trans.txt")


# -- a plain folder of pairs ---------------------------------------------------------------------

def import_pairs(src: Path, w: ImportWriter, speaker: str, language: str | None) -> None:
    if not src.is_dir():
        raise UserError(f"import: {src} is not a folder of name.<audio> + name.txt")
    for folder, rel, files in _folders(src, w, output_paths(w, src)):
        if rel.parts:  # pairs sit directly in SRC
            for name in files:
                if is_audio(name) or _suffix(name) == ".txt":
                    w.reject(str(rel / name), "bad_layout", "expected name.<audio> + name.txt right in SRC")
                else:
                    _other(w, str(rel / name), name, "name.txt")
            continue
        transcripts = {os.path.splitext(n)[0]: n for n in files if _suffix(n) == ".txt"}  # also NAME.TXT
        used = set()
        for stem, audio in _audio_stems(files).items():
            name = _take(w, rel, audio)
            used.update(audio)
            txt = transcripts.get(stem)
            if txt is None:
                w.reject(name, "missing_text", f"no {stem}.txt beside it")
                continue
            used.add(txt)
            said = " ".join((folder / txt).read_text(encoding="utf-8-sig", errors="replace").split())
            if not said:
                w.reject(name, "missing_text", f"{txt} is empty")
                continue
            why = probe(folder / name)
            if why:
                w.reject(name, "unreadable_audio", why)
                continue
            w.add({"id": stem, "audio": str(folder / name), "text": said, "speaker": speaker,
                   "language": language}, name)
        unsupported = _unsupported_stems(files)
        for name in files:
            if name in used or _is_doc(name):
                continue
            stem = os.path.splitext(name)[0]
            if _suffix(name) == ".txt":
                if stem not in unsupported:  # else the audio's own line says why
                    w.reject(name, "audio_not_found", f"no {stem}.<audio> beside it")
            else:
                _other(w, name, name, "name.txt")


# -- auto ----------------------------------------------------------------------------------------

def _subdirs(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as it:
            return sorted(Path(e.path) for e in it if e.is_dir(follow_symlinks=False))
    except OSError:
        return []


def _chapter_kind(folder: Path) -> str | None:
    try:
        with os.scandir(folder) as it:
            names = [e.name for e in it if e.is_file()]
    except OSError:
        return None
    if any(n.endswith(".trans.txt") for n in names):
        return "librispeech"
    if any(n.endswith(LIBRITTS_TEXT) for n in names):
        return "libritts"
    return None


def detect_layout(src: Path) -> str:
    """ljspeech, libritts, librispeech or pairs, from what `src` holds; a UserError (one line) otherwise."""
    known = "; ".join(f"{k}: {v}" for k, v in LAYOUTS.items())
    if src.is_file():
        if src.name == "metadata.csv":
            return "ljspeech"
        raise UserError(f"import auto: {src} is a file, not a corpus folder; it knows {known}")
    if (src / "metadata.csv").is_file():
        return "ljspeech"
    with os.scandir(src) as it:
        if any(e.is_file() and _suffix(e.name) in KNOWN_AUDIO for e in it):
            return "pairs"
    for spk in _subdirs(src):
        for chapter in _subdirs(spk):
            kind = _chapter_kind(chapter)
            if kind:
                return kind
    for subset in _subdirs(src):  # a corpus root (LibriSpeech/) instead of one of its subsets
        for spk in _subdirs(subset):
            for chapter in _subdirs(spk):
                kind = _chapter_kind(chapter)
                if kind:
                    raise UserError(f"import auto: {src} holds {kind} subsets: point SRC at one of them, "
                                    f"e.g. {subset}")
    raise UserError(f"import auto: {src} is not a layout it knows: {known} (hf-parquet, lhotse: name them)")
