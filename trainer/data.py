"""The trainer's reader of datasets written by ``benbeam convert``.

All file access of the trainer goes through this module: ``open_dataset`` reads and checks
``dataset.json`` (through ``transforms.storage``, so local paths, ``s3://`` and ``gs://``
alike) and ``record_dataset`` turns shard URLs into a ``tf.data`` stream of serialised
examples — TensorFlow's native reader for local files and ``gs://``, the project's own fsspec
TFRecord reader (``transforms.encode.iter_records``) for the rest (``s3://``, emulators). ``make_dataset`` builds the
training / evaluation input pipeline on top: interleaved shards, batched parsing with the
feature spec of ``schemas.tfrecord``, channel selection by modality, prefetch. Raw-encoded
datasets (``convert --encoding raw``) are upsampled and normalised here, in the graph
(``raw_image``, from a ``transforms.raw_decode.RawSpec``; for long streams one XLA computation,
``trainer.raw_tf``): by default into the same tensors as the normalised encoding of the same run.
No augmentation here: ``--augment`` runs inside the fitted model (``trainer.augment``).
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field

import tensorflow as tf

from bigearthnet_beam.schemas import bands, errors, tfrecord
from bigearthnet_beam.schemas import manifest as manifest_schema
from bigearthnet_beam.transforms import containment
from bigearthnet_beam.transforms.storage import Storage, protocol

# Which TFRecord feature holds each modality's channels (in schemas.bands.MODALITIES order).
MODALITY_FEATURE = {"s2": tfrecord.S2, "s1": tfrecord.S1}


@dataclass
class Dataset:
    """A converted dataset: its root URL, its checked manifest and its shard URLs per split."""

    root: str
    manifest: dict
    shards: dict[str, list[str]] = field(default_factory=dict)
    manifest_sha256: str = ""
    storage: Storage = Storage()  # where it is read from (``open_dataset``'s)

    @property
    def image_dtype(self) -> str:
        """The images' dtype in the shards (float32 or float16; ``raw`` for the raw encoding)."""
        return self.manifest["image_dtype"]

    @property
    def raw(self) -> bool:
        """Whether the shards hold the raw encoding (native resolution, not normalised)."""
        return self.manifest.get("encoding") == tfrecord.RAW

    @property
    def compression(self) -> str:
        """The shards' TFRecord compression (none or gzip)."""
        return self.manifest["compression"]

    def records(self, split: str) -> int:
        """Patches written to ``split``."""
        return int(self.split_info(split)["written"])

    def split_info(self, split: str) -> dict:
        """The manifest's entry of ``split`` (ValueError naming the splits there are)."""
        manifest_schema.check_split(split)
        try:
            return self.manifest["splits"][split]
        except KeyError:
            have = ", ".join(sorted(self.manifest["splits"])) or "none"
            raise ValueError(
                f"the dataset at {self.root} has no split {split!r} (it has: {have}); "
                "convert it with that split selected"
            ) from None


def open_dataset(url: str, storage: Storage | None = None) -> Dataset:
    """Read and check ``<url>/dataset.json`` under ``storage`` (default ``Storage()``); refuse a
    dataset without a complete manifest. Every later read of the dataset uses the same storage.

    Raises ``schemas.manifest.ManifestError`` saying what is wrong and what to do.
    """
    url = str(url)
    storage = storage if storage is not None else Storage()
    manifest, raw = manifest_schema.load(
        url, storage.read_bytes, hint="run `benbeam convert` to completion and pass its --out folder as --data"
    )
    try:  # shard paths come from a file the user did not write by hand: each must stay inside the dataset
        shards = {
            split: [containment.check_relative(s.path, url, what="shard") for s in info.shards]
            for split, info in manifest.splits.items()
        }
    except ValueError as e:
        raise manifest_schema.ManifestError(f"{url}/{manifest_schema.MANIFEST}: {e}") from None
    return Dataset(url, manifest.to_dict(), shards, hashlib.sha256(raw).hexdigest(), storage)


# --------------------------------------------------------------------------- records


class ShardError(errors.IntegrityError):
    """A shard of the dataset cannot be read (corrupt or truncated): a data failure, exit 1."""


def unreadable_shard(ds: Dataset, splits) -> str | None:
    """What is wrong with the first shard of ``splits`` that does not read back cleanly (CRCs
    and record counts checked, as ``benbeam verify`` does); None if every one does."""
    from bigearthnet_beam.transforms.encode import iter_records

    for split in splits:
        counts = [s["records"] for s in ds.split_info(split)["shards"]]
        for url, want in zip(ds.shards.get(split, ()), counts, strict=False):
            n = 0
            try:
                for _ in iter_records(url, ds.compression, st=ds.storage):
                    n += 1
            except Exception as e:  # noqa: BLE001 - whatever breaks the read is the finding
                text = str(e)
                return text if url in text else f"{url}: {type(e).__name__}: {text}"
            if n != want:
                return f"{url}: {n} records, {manifest_schema.MANIFEST} says {want}"
    return None


@contextlib.contextmanager
def shard_errors(ds: Dataset, splits):
    """Within the block, TensorFlow's read error on a shard of ``splits`` (a ``DataLossError``
    that does not say which file) becomes a ``ShardError`` naming the shard."""
    try:
        yield
    except tf.errors.OpError as e:
        urls = [u for s in splits for u in ds.shards.get(s, ())]
        if not isinstance(e, tf.errors.DataLossError) and not any(u in str(e) for u in urls):
            raise
        bad = unreadable_shard(ds, splits)
        if bad is None:
            raise
        raise ShardError(
            f"corrupt shard {bad} (`benbeam verify {ds.root}` lists every problem; convert the dataset again)"
        ) from e


def native_reads(urls: list[str], storage: Storage | None = None) -> bool:
    """Whether TensorFlow's own file systems read every URL: local paths, and ``gs://`` where this
    TensorFlow has its GCS file system and ``storage`` asks for nothing TensorFlow's GCS client
    cannot do (it always talks to storage.googleapis.com with the default credentials: no
    emulator endpoint, token, project or anonymous access). ``s3://`` needs tensorflow-io: not native."""
    schemes = {protocol(u) for u in urls}
    if schemes <= {"file"}:
        return True
    if schemes != {"gs"} or "gs" not in tf.io.gfile.get_registered_schemes():
        return False
    st = storage if storage is not None else Storage()
    return not (st.gcs_endpoint_url or st.gcs_token or st.gcs_project or st.anon)


def record_dataset(
    urls: list[str],
    compression: str,
    *,
    parallel: int = 4,
    deterministic: bool = True,
    shuffle_files: bool = False,
    seed: int | None = None,
    native: bool | None = None,
    storage: Storage | None = None,
) -> tf.data.Dataset:
    """Serialised examples of the given shards, ``parallel`` shards read interleaved.

    Shards TensorFlow reads itself (``native_reads``: local, ``gs://``) go through
    ``tf.data.TFRecordDataset``; others (``s3://``, an emulated ``gs://``, anything fsspec reads)
    are streamed through ``transforms.encode.iter_records`` with CRC checks, under ``storage``
    (default ``Storage()``). ``native`` forces one or the other.
    """
    storage = storage if storage is not None else Storage()
    urls = [str(u) for u in urls]
    if not urls:
        raise ValueError("no shards to read")
    tf_compression = "GZIP" if compression == "gzip" else ""
    files = tf.data.Dataset.from_tensor_slices(urls)
    if shuffle_files:
        files = files.shuffle(len(urls), seed=seed, reshuffle_each_iteration=True)
    if not (native_reads(urls, storage) if native is None else native):
        read = _remote_reader(compression, storage)
    else:

        def read(u):
            return tf.data.TFRecordDataset(u, compression_type=tf_compression, buffer_size=1 << 20)

    cycle = max(1, min(parallel, len(urls)))
    return files.interleave(
        read, cycle_length=cycle, block_length=1, num_parallel_calls=cycle, deterministic=deterministic
    )


def _remote_reader(compression: str, st: Storage):
    def gen(url):
        from bigearthnet_beam.transforms.encode import iter_records

        u = url.decode() if isinstance(url, bytes) else str(url)
        yield from iter_records(u, compression, st=st)

    def read(u):
        return tf.data.Dataset.from_generator(gen, args=(u,), output_signature=tf.TensorSpec((), tf.string))

    return read


# --------------------------------------------------------------------------- examples


def channel_selection(modalities) -> tuple[tuple[str, ...], list[tuple[str, list[int]]]]:
    """Channels for ``modalities`` and, per needed feature, the indices to take from it."""
    channels = bands.channels_for(modalities)
    picks = []
    for m, names in bands.MODALITIES.items():
        idx = [names.index(c) for c in channels if c in names]
        if idx:
            picks.append((MODALITY_FEATURE[m], idx))
    return channels, picks


def raw_image(ex: dict, spec) -> tf.Tensor:
    """float32[B,H,W,C] from the decoded raw features of a batch (``tfrecord.decode_parsed``) and a
    ``transforms.raw_decode.RawSpec``: per resolution group a gather, the affine part of the
    normalisation, ``W @ X @ W.T``, the clipping (``RawSpec.group_norm``); then the channel order
    and one transpose to channels-last. The arithmetic runs channels-first, where TensorFlow's
    per-channel broadcasting is ~3x faster than over a last axis of 14."""
    parts = []
    for g in spec.groups:
        x = ex[g.feature]
        if len(g.index) != x.shape[1]:
            x = tf.gather(x, list(g.index), axis=1)
        x = tf.cast(x, tf.float32)
        norm = spec.group_norm(g)
        if norm is not None:
            x = (x - tf.constant(norm[0])) / tf.constant(norm[1])
        if g.weights is not None:
            x = _upsample(x, g.weights)
        if norm is not None and spec.norm.clip:
            x = tf.clip_by_value(x, tf.constant(norm[2]), tf.constant(norm[3]))
        parts.append(x)
    x = parts[0] if len(parts) == 1 else tf.concat(parts, axis=1)
    if not spec.identity_order:
        x = tf.gather(x, list(spec.order), axis=1)
    return tf.transpose(x, [0, 2, 3, 1])


def _upsample(x: tf.Tensor, w) -> tf.Tensor:
    """``W @ X @ W.T`` for x float32[B, k, n, n] and W float32[N, n], as plain 2-D matmuls (TensorFlow's
    broadcasting batch matmul crashes on a batch dimension of size 1 against a rank-2 matrix)."""
    big, n = w.shape
    wt = tf.constant(w.T)
    b, k = tf.shape(x)[0], tf.shape(x)[1]
    t = tf.transpose(x, [0, 1, 3, 2])  # X.T: rows of W @ X come out as columns
    t = tf.reshape(tf.matmul(tf.reshape(t, [-1, n]), wt), [b, k, n, big])  # (W @ X).T
    t = tf.transpose(t, [0, 1, 3, 2])
    return tf.reshape(tf.matmul(tf.reshape(t, [-1, n]), wt), [b, k, big, big])


def parse_batch(
    serialized,
    *,
    image_dtype: str,
    modalities="s2,s1",
    with_multi_hot: bool = False,
    with_ids: bool = False,
    raw_spec=None,
    raw_xla: bool = False,
    batch_size: int | None = None,
):
    """A batch of serialised examples -> ``(image float32[B,H,W,C], targets[, ids])``.

    ``targets`` is ``{"seg": uint8[B,H,W]}`` (255 = ignore) plus ``"multi": float32[B,19]``.
    ``image_dtype`` ``raw``: ``raw_spec`` (a ``transforms.raw_decode.RawSpec``) makes the image, with
    ``raw_image`` or, ``raw_xla``, compiled with XLA (``trainer.raw_tf``; ``batch_size``: the
    batches' size, to which a smaller last batch is padded for one compiled shape).
    """
    from bigearthnet_beam.trainer.model import MULTI, SEG

    parsed = tf.io.parse_example(serialized, tfrecord.parsing_spec(image_dtype))
    ex = tfrecord.decode_parsed(parsed, image_dtype)
    if image_dtype == tfrecord.RAW:
        if raw_spec is None:
            raise ValueError("a raw-encoded dataset needs a RawSpec (transforms.raw_decode.make_spec)")
        if raw_xla:
            from bigearthnet_beam.trainer import raw_tf

            image = raw_tf.raw_image(ex, raw_spec, batch_size)
        else:
            image = raw_image(ex, raw_spec)
    else:
        image = _normalized_image(ex, image_dtype, modalities)
    targets = {SEG: ex[tfrecord.LABEL]}
    if with_multi_hot:
        targets[MULTI] = tf.cast(ex[tfrecord.MULTI_HOT], tf.float32)
    if with_ids:
        return image, targets, ex[tfrecord.PATCH_ID]
    return image, targets


def _normalized_image(ex: dict, image_dtype: str, modalities) -> tf.Tensor:
    """float32[B,H,W,C] of the channels of ``modalities`` from normalised image features."""
    _, picks = channel_selection(modalities)
    parts = []
    for feat, idx in picks:
        t = ex[feat]
        n = tfrecord.feature_by_name(image_dtype)[feat].shape[-1]
        if idx != list(range(n)):
            t = tf.gather(t, idx, axis=-1)
        parts.append(tf.cast(t, tf.float32))
    return parts[0] if len(parts) == 1 else tf.concat(parts, axis=-1)


def read_spec(ds: Dataset, modalities="s2,s1", *, band_subset=None, resampling=None, statistics=None):
    """The ``RawSpec`` of a raw dataset's reader (None for a normalised one, which takes no read-time
    options: ValueError if any is given). ``band_subset``: band names in output order (default: the
    channels of ``modalities``); ``resampling``: default the conversion's; ``statistics``: see
    ``transforms.raw_decode.resolve_norm`` (default the manifest's)."""
    from bigearthnet_beam.transforms import raw_decode

    if not ds.raw:
        if (resampling, statistics) != (None, None) or (
            band_subset is not None and tuple(band_subset) != channel_selection(modalities)[0]
        ):
            raise ValueError(
                f"{ds.root} holds normalised records: read-time resampling, statistics and band subsets "
                "need a raw-encoded dataset (`benbeam convert --encoding raw`)"
            )
        return None
    channels = tuple(band_subset) if band_subset is not None else channel_selection(modalities)[0]
    return raw_decode.make_spec(ds.manifest, channels, resampling, statistics)


def make_dataset(
    ds: Dataset,
    split: str,
    *,
    batch_size: int = 32,
    modalities="s2,s1",
    training: bool = False,
    shuffle_buffer: int = 256,
    repeat: bool = False,
    max_patches: int | None = None,
    with_multi_hot: bool = False,
    with_ids: bool = False,
    seed: int | None = None,
    parallel_reads: int = 4,
    drop_remainder: bool = False,
    band_subset=None,
    resampling: str | None = None,
    statistics=None,
    raw_xla: bool | None = None,
) -> tf.data.Dataset:
    """The ``tf.data`` input pipeline of one split.

    ``training``: shard order shuffled per epoch, non-deterministic interleave, a shuffle
    buffer of serialised records. ``max_patches`` keeps the first N records of the split
    (in a fixed shard order, so the subset is the same every epoch). ``repeat`` makes the
    stream endless (for ``steps_per_epoch``). Parsing is batched (``tf.io.parse_example``)
    and runs in parallel with training. ``band_subset``, ``resampling``, ``statistics``: read-time
    options of a raw-encoded dataset (``read_spec``); the defaults give the normalised encoding's tensors.
    ``raw_xla``: decode raw records with the XLA-compiled graph (``trainer.raw_tf``; same tensors within
    float32 rounding); None (default): for endless streams and streams of at least
    ``raw_tf.XLA_MIN_PATCHES`` patches, where compiling pays for itself (normalised datasets: ignored).
    """
    spec = read_spec(ds, modalities, band_subset=band_subset, resampling=resampling, statistics=statistics)
    urls = ds.shards.get(split)
    info = ds.split_info(split)
    if not urls or not info.get("written"):
        raise ValueError(f"split {split!r} of {ds.root} holds no patches")
    fixed_subset = max_patches is not None
    records = record_dataset(
        urls,
        ds.compression,
        parallel=parallel_reads,
        deterministic=not training or fixed_subset,
        shuffle_files=training and not fixed_subset,
        seed=seed,
        storage=ds.storage,
    )
    if max_patches is not None:
        records = records.take(int(max_patches))
    if training and shuffle_buffer > 1:
        records = records.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        records = records.repeat()
    records = records.batch(batch_size, drop_remainder=drop_remainder)
    if not repeat:  # known length: progress bars with a total, no "ran out of data" warnings
        n = num_patches(ds, split, max_patches)
        batches = n // batch_size if drop_remainder else -(-n // batch_size)
        records = records.apply(tf.data.experimental.assert_cardinality(batches))

    if spec is not None and raw_xla is None:
        from bigearthnet_beam.trainer import raw_tf

        raw_xla = raw_tf.use_xla(None if repeat else num_patches(ds, split, max_patches))

    def parse(serialized):
        return parse_batch(
            serialized,
            image_dtype=ds.image_dtype,
            modalities=modalities,
            with_multi_hot=with_multi_hot,
            with_ids=with_ids,
            raw_spec=spec,
            raw_xla=bool(raw_xla) and spec is not None,
            batch_size=batch_size,
        )

    out = records.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training)
    return out.prefetch(tf.data.AUTOTUNE)


def num_patches(ds: Dataset, split: str, max_patches: int | None = None) -> int:
    """Patches a run reads from ``split``: all, or at most ``max_patches``."""
    n = ds.records(split)
    return min(n, int(max_patches)) if max_patches is not None else n
