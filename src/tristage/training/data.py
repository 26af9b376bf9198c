"""Training data: features store + prepared manifest + caption vectors + speaker mapping.

- one example per utterance present in both the features store and the prepared manifest;
- train / validation split by utterance, fixed by `seed` (`val_fraction`);
- speaker reference = another utterance of the same speaker (`speaker_ref: other`),
  emotion reference = the target utterance (`emotion_ref: same`); both randomly cropped to
  `max_ref_frames` mel frames;
- speaker label = id from the speaker mapping, -100 (ignored by the loss) outside it;
- caption = the row's caption, or where it has none, the one rebuilt from its attribute columns
  (`row_captions`: the same text the caption_vectors table was built from);
- an utterance whose target is longer than `max_frames` codec frames is SKIPPED, never cut (a cut
  target would keep its whole transcript): counted in `n_skipped_too_long` (stage metrics) and
  warned once with the count and the param to raise (`stage1.model.max_frames`); likewise a
  transcript longer than `max_text_len` text tokens (`n_skipped_text_too_long`; a cut transcript
  would leave audio the text no longer says);
- text tokens come from the model's front-end (`model/text.py`: bytes or espeak-ng phonemes);
- `BucketSampler`: length-bucketed global batches, an epoch order fixed by (seed, epoch), each
  DDP rank taking its slice; its position is part of the trainer state (exact resume). Every
  random choice for an example (crops, references) comes from a generator seeded by (seed,
  epoch, position, example), so a resumed run, or a run on another number of processes,
  builds the very same rows.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tristage.captions.tokenize import row_captions
from tristage.data.split import HELDOUT, TRAIN, VAL, split_ids
from tristage.errors import UserError
from tristage.features.mel import pad_mels
from tristage.model.config import TEXT_PAD_ID
from tristage.model.text import TextTooLong, encode_text

log = logging.getLogger(__name__)
CACHE_UTTERANCES = 8192  # decoded utterances kept in memory (about 40 KB each at the demo's sizes)
_WARNED: set[tuple[str, int, int]] = set()  # (features, max_frames, count) warned about in this process


@dataclasses.dataclass
class Sources:
    """Everything a stage reads, opened. Tests build one from fakes."""

    store: Any  # .ids, .index, .meta, .load(id) -> (mel (T_mel, n_mels), codes (K, T))
    manifest: Any  # DataFrame: id, text, speaker, caption, emotion, ...
    table: Any  # caption vector table: .dim, .encode(caption) -> list[int]
    mapping: dict[str, int]
    n_codebooks: int
    codebook_size: int
    n_mels: int
    caption_module: str = "tristage.captions.peft:CaptionPEFT"
    caption_table: str = "tristage.captions.vectors:CaptionVectorTable"
    caption_vectors: str | None = None
    codec: str = "unknown"
    caption_encoder: str = "unknown"


def _meta_get(meta: dict, *keys, default=None):
    for k in keys:
        node = meta
        for part in k.split("."):
            if not isinstance(node, dict) or part not in node:
                node = None
                break
            node = node[part]
        if node is not None:
            return node
    return default


def _describe(info: Any) -> str:
    if isinstance(info, str):
        return info
    if isinstance(info, dict):
        name = info.get("name") or info.get("model") or info.get("kind") or info.get("encoder") or "?"
        pre, name = info.get("pretrained"), str(name)
        if info.get("kind") == "melvq":  # fitted on the corpus: neither random-init nor pretrained
            return name
        if pre is None or ("random-init" if pre is False else "pretrained") in name:
            return name
        return f"random-init {name}" if pre is False else f"pretrained {name}"
    return "unknown"


def load_sources(sp) -> Sources:
    """Open the real upstream outputs named in a stage's params (UserError naming the stage to run)."""
    from tristage.fsio import read_json

    for path, stage in ((sp.features, "features"), (sp.caption_vectors, "caption_vectors"),
                        (sp.speaker_mapping, "speaker_mapping"), (sp.prepared, "prepare")):
        if not Path(path).exists():
            raise UserError(f"{path} not found: run the `{stage}` stage first (dvc repro {stage})")
    from tristage.captions.vectors import CaptionVectorTable
    from tristage.data.manifest import read_prepared
    from tristage.features.store import FeatureStore

    store = FeatureStore(sp.features)
    table = CaptionVectorTable.load(sp.caption_vectors)
    mapping = read_json(sp.speaker_mapping)
    if not isinstance(mapping, dict):
        raise UserError(f"{sp.speaker_mapping}: expected a JSON object speaker -> id")
    meta = store.meta
    n_mels = _meta_get(meta, "n_mels", "mel.n_mels")
    K = _meta_get(meta, "n_codebooks", "codec.n_codebooks")
    V = _meta_get(meta, "codebook_size", "codec.codebook_size")
    if not (n_mels and K and V):
        raise UserError(f"{sp.features}: features meta lacks n_mels / n_codebooks / codebook_size; "
                        "rerun the `features` stage (dvc repro features)")
    codec = _meta_get(meta, "codec", default="unknown")
    enc = getattr(table, "encoder_info", None) or getattr(table, "meta", None) or "unknown"
    return Sources(store=store, manifest=read_prepared(sp.prepared), table=table, mapping=mapping,
                   n_codebooks=int(K), codebook_size=int(V), n_mels=int(n_mels),
                   caption_vectors=str(sp.caption_vectors),
                   codec=_describe(codec), caption_encoder=_describe(enc))


@dataclasses.dataclass
class Example:
    id: str
    text: list[int]
    speaker: str
    label: int
    caption: list[int]
    n_frames: int
    caption_text: str = ""  # the caption (rebuilt from attribute columns where the row has none)


class BucketSampler:
    """Length-bucketed batches; epoch order from (seed, epoch).

    Global batches of `batch_size * world` examples are formed and ordered the same way for any
    world size; rank r takes slice r of each. So N processes with batch_size B see exactly the
    examples that one process with batch_size N*B sees, step by step."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, bucket_batches: int = 8,
                 rank: int = 0, world: int = 1):
        self.lengths = np.asarray(lengths)
        self.batch_size = max(1, min(batch_size, len(lengths) // max(world, 1)))
        self.seed, self.bucket_batches, self.rank, self.world = seed, bucket_batches, rank, world
        self.epoch, self.pos = 0, 0
        self._batches = self._epoch_batches(0)
        if not self._batches:
            raise UserError(f"not enough training utterances ({len(lengths)}) for {world} process(es)")

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(len(self.lengths))
        B = self.batch_size
        G = B * self.world  # global batch
        chunk = G * self.bucket_batches
        batches = []
        for i in range(0, len(perm), chunk):
            bucket = perm[i:i + chunk]
            bucket = bucket[np.argsort(self.lengths[bucket], kind="stable")]
            batches += [bucket[j:j + G].tolist() for j in range(0, len(bucket) - G + 1, G)]
        order = rng.permutation(len(batches))
        return [batches[i][self.rank * B:(self.rank + 1) * B] for i in order]

    def __len__(self) -> int:
        return len(self._batches)

    def next(self) -> tuple[list[int], tuple[int, int]]:
        """The next batch of example indices, and its (epoch, position) for seeding."""
        if self.pos >= len(self._batches):
            self.epoch, self.pos = self.epoch + 1, 0
            self._batches = self._epoch_batches(self.epoch)
        key = (self.epoch, self.pos)
        batch = self._batches[self.pos]
        self.pos += 1
        return batch, key

    def state_dict(self) -> dict:
        return dict(epoch=self.epoch, pos=self.pos)

    def load_state_dict(self, s: dict) -> None:
        self.epoch, self.pos = int(s["epoch"]), int(s["pos"])
        self._batches = self._epoch_batches(self.epoch)


@dataclasses.dataclass
class _Usable:
    """The utterance ids a stage trains on (features + a manifest row + at most max_frames), sorted;
    `n_frames`: id -> target length in codec frames, for every id in the features store."""

    ids: list[str]
    n_frames: dict[str, int]
    n_skipped_too_long: int


@dataclasses.dataclass
class _Split:
    """Example indices: `train_idx` / `val_idx` by `seed` and `val_fraction`, minus the held-out
    speakers' utterances, which are `heldout_idx` (evaluate judges them as zero-shot)."""

    train_idx: list[int]
    val_idx: list[int]
    heldout_idx: list[int]


def _indexed_manifest(src: Sources, sp):
    """The manifest, one row per id, indexed by id, with `caption` rebuilt where a row has none."""
    man = src.manifest
    if "id" not in man.columns:
        raise UserError(f"{sp.prepared}: prepared manifest has no `id` column; rerun `prepare`")
    man = man.drop_duplicates("id").reset_index(drop=True)
    man["caption"] = row_captions(man)
    return man.set_index("id")


def _warn_too_long(sp, too_long: list[str], n_kept: int, max_frames: int, n_frames: dict[str, int]) -> None:
    """Once per (features, max_frames, count) in this process: how many targets were skipped as too long."""
    key = (str(sp.features), max_frames, len(too_long))
    if key in _WARNED:
        return
    _WARNED.add(key)
    longest = max(n_frames[i] for i in too_long)
    log.warning(
        "%d of %d utterances have targets longer than max_frames=%d codec frames (longest "
        "%d); skipped, not truncated. Raise stage1.model.max_frames to keep them",
        len(too_long),
        len(too_long) + n_kept,
        max_frames,
        longest,
    )


def _usable_ids(src: Sources, man, sp, max_frames: int) -> _Usable:
    """The ids in both the features store and the manifest, minus targets over `max_frames` (skipped,
    never cut); UserError when fewer than 2 remain."""
    index = src.store.index
    n_frames = dict(zip(index["id"].astype(str), index["n_frames"].astype(int)))
    ids = [i for i in map(str, src.store.ids) if i in man.index]
    dropped = len(src.store.ids) - len(ids)
    if dropped:
        log.warning("%d feature ids are not in the prepared manifest %s; skipped", dropped, sp.prepared)
    too_long = [i for i in ids if n_frames[i] > max_frames]
    if too_long:
        ids = [i for i in ids if n_frames[i] <= max_frames]
        _warn_too_long(sp, too_long, len(ids), max_frames, n_frames)
    if len(ids) < 2:
        raise UserError(
            f"{sp.features}: only {len(ids)} utterance(s) with features, a manifest row and "
            f"at most max_frames={max_frames} codec frames; need at least 2 (rerun `features` on the "
            "prepared manifest, or raise stage1.model.max_frames)"
        )
    return _Usable(sorted(ids), n_frames, len(too_long))


def _examples(usable: _Usable, man, src: Sources, encode) -> tuple[list[Example], list[tuple[str, int]]]:
    """One `Example` per usable id (encoded text and caption, speaker label: -100 outside the mapping),
    and the (id, tokens) of transcripts longer than max_text_len, which are skipped, never cut."""
    examples, too_long = [], []
    for uid in usable.ids:
        row = man.loc[uid]
        spk = str(row["speaker"])
        try:
            text = encode(str(row["text"]))
        except TextTooLong as exc:
            too_long.append((uid, exc.n_tokens))
            continue
        examples.append(Example(
            id=uid, text=text, speaker=spk,
            label=int(src.mapping.get(spk, -100)), caption=list(src.table.encode(row["caption"])) or [0],
            n_frames=usable.n_frames[uid], caption_text=row["caption"]))
    return examples, too_long


def _warn_text_too_long(sp, too_long: list[tuple[str, int]], n_kept: int, max_text_len: int) -> None:
    key = (str(sp.prepared), -max_text_len, len(too_long))
    if key in _WARNED:
        return
    _WARNED.add(key)
    uid, longest = max(too_long, key=lambda t: t[1])
    log.warning("%d of %d utterances have transcripts longer than max_text_len=%d text tokens (longest "
                "%d, %s); skipped, not truncated. Raise stage1.model.max_text_len to keep them",
                len(too_long), len(too_long) + n_kept, max_text_len, longest, uid)


def _split(examples: list[Example], sp) -> _Split:
    """Train / validation / held-out speakers by `data.split` (by id and seed, never by length)."""
    split = split_ids([ex.id for ex in examples], [ex.speaker for ex in examples], sp.val_fraction,
                      sp.heldout_speakers, sp.seed)
    by = {name: [i for i, ex in enumerate(examples) if split[ex.id] == name]
          for name in (TRAIN, VAL, HELDOUT)}
    return _Split(train_idx=by[TRAIN], val_idx=by[VAL], heldout_idx=by[HELDOUT])


class TrainData:
    def __init__(self, src: Sources, sp, max_text_len: int, max_frames: int, rank: int = 0, world: int = 1,
                 frontend: str = "bytes", voice: str = "en-us"):
        self.src, self.sp, self.max_frames, self.rank, self.world = src, sp, max_frames, rank, world
        man = _indexed_manifest(src, sp)
        usable = _usable_ids(src, man, sp, max_frames)
        self.n_skipped_too_long = usable.n_skipped_too_long
        self.examples, too_long = _examples(usable, man, src,
                                            lambda t: encode_text(t, max_text_len, frontend, voice))
        self.n_skipped_text_too_long = len(too_long)
        if too_long:
            _warn_text_too_long(sp, too_long, len(self.examples), max_text_len)
        if len(self.examples) < 2:
            raise UserError(f"{sp.prepared}: only {len(self.examples)} utterance(s) with a transcript of at "
                            f"most max_text_len={max_text_len} text tokens; raise stage1.model.max_text_len")
        split = _split(self.examples, sp)
        self.train_idx, self.val_idx, self.heldout_idx = split.train_idx, split.val_idx, split.heldout_idx
        # (speaker, in validation) -> example indices: the pool a speaker reference is drawn from
        self.by_speaker: dict[tuple[str, bool], list[int]] = {}
        val_set = set(self.val_idx)
        for i, ex in enumerate(self.examples):
            self.by_speaker.setdefault((ex.speaker, i in val_set), []).append(i)
        self.sampler = BucketSampler(
            [self.examples[i].n_frames for i in self.train_idx],
            sp.batch_size,
            sp.seed,
            sp.bucket_batches,
            rank,
            world,
        )
        # the most recently used utterances (features + references), bounded:
        # memory stays flat at any corpus size
        self._cache: collections.OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = (
            collections.OrderedDict()
        )

    def text_rate(self) -> float:
        """Codec frames per text token over the training split (the decoder's `aligned` positions)."""
        exs = [self.examples[i] for i in self.train_idx]
        return round(sum(e.n_frames for e in exs) / max(1, sum(len(e.text) for e in exs)), 4)

    # -- loading ------------------------------------------------------------------------
    def features(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        uid = self.examples[i].id
        if uid in self._cache:
            self._cache.move_to_end(uid)
            return self._cache[uid]
        mel, codes = self.src.store.load(uid)
        self._cache[uid] = item = (torch.as_tensor(mel), torch.as_tensor(codes))
        if len(self._cache) > CACHE_UTTERANCES:
            self._cache.popitem(last=False)
        return item

    def _ref(self, i: int, mode: str, val: bool, rng: np.random.Generator) -> int:
        if mode == "same":
            return i
        pool = [j for j in self.by_speaker[(self.examples[i].speaker, val)] if j != i]
        return int(pool[rng.integers(len(pool))]) if pool else i

    def _crop(self, mel: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        T, n = mel.shape[0], self.sp.max_ref_frames
        if T <= n:
            return mel
        s = int(rng.integers(T - n + 1))
        return mel[s:s + n]

    def collate(self, idx: list[int], key: list[int], val: bool = False) -> dict[str, torch.Tensor]:
        """Example indices -> a padded batch (CPU tensors). Each example's random choices (crops,
        references) come from a generator seeded by (`key`, example index): the same example in the
        same step gets the same batch row whatever the world size or its position in the batch."""
        exs = [self.examples[i] for i in idx]
        B, K = len(exs), self.src.n_codebooks
        Lt = max(len(e.text) for e in exs)
        T = max(e.n_frames for e in exs)
        Lc = max(len(e.caption) for e in exs)
        text = torch.full((B, Lt), TEXT_PAD_ID, dtype=torch.long)
        codes = torch.zeros((B, K, T), dtype=torch.long)
        caption = torch.zeros((B, Lc), dtype=torch.long)
        caption_mask = torch.zeros((B, Lc), dtype=torch.bool)
        spk, emo = [], []
        for b, (i, e) in enumerate(zip(idx, exs)):
            rng = np.random.default_rng([*key, i])
            text[b, :len(e.text)] = torch.tensor(e.text)
            caption[b, :len(e.caption)] = torch.tensor(e.caption)
            caption_mask[b, :len(e.caption)] = True
            mel, c = self.features(i)
            codes[b, :, :e.n_frames] = c[:, :e.n_frames].long()
            spk.append(self._crop(self.features(self._ref(i, self.sp.speaker_ref, val, rng))[0], rng))
            emo.append(self._crop(self.features(self._ref(i, self.sp.emotion_ref, val, rng))[0], rng))
        spk_mel, spk_mask = pad_mels(spk)
        emo_mel, emo_mask = pad_mels(emo)
        return dict(text=text, text_mask=text != TEXT_PAD_ID, codes=codes,
                    code_lengths=torch.tensor([e.n_frames for e in exs]), caption_ids=caption,
                    caption_mask=caption_mask, spk_mel=spk_mel, spk_mask=spk_mask, emo_mel=emo_mel,
                    emo_mask=emo_mask, speaker=torch.tensor([e.label for e in exs]))

    def next_batch(self) -> dict[str, torch.Tensor]:
        idx, (epoch, pos) = self.sampler.next()
        return self.collate([self.train_idx[j] for j in idx], [self.sp.seed, epoch, pos])

    def val_batches(self, batch_size: int) -> list[dict[str, torch.Tensor]]:
        """Fixed validation batches (same crops and references every evaluation)."""
        order = sorted(self.val_idx, key=lambda i: self.examples[i].n_frames)
        return [self.collate(order[i:i + batch_size], [self.sp.seed, 999_983], val=True)
                for i in range(0, len(order), batch_size)]


def to_device(batch: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
