"""``benbeam predict``: the flags and the command (``run(argv)``).

``--tile`` maps one tile, ``--input_dir --benchmark`` many one after the other, and
``--input_dir`` alone runs the Beam pipeline (``trainer.inference.beam``; Beam flags such as
``--runner`` pass through). Tiles, ``--s1``, ``--model`` and ``--out`` may be local paths or
``s3://`` / ``gs://`` URLs. Exit codes: 0 ok, 1 a tile or the job failed, 2 a usage error,
3 an object store that cannot be reached or an --out folder in use, 130 interrupted.

``--out`` follows the output-folder rules of ``transforms.outdir``: new, empty, or an earlier
``benbeam predict`` output (its marker); one run at a time (its lock).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from bigearthnet_beam.schemas import errors
from bigearthnet_beam.trainer.inference import staging
from bigearthnet_beam.trainer.inference.settings import (
    DEFAULTS,
    PROBS_DTYPES,
    REPORT_CSV,
    VIEWER,
    PredictError,
)
from bigearthnet_beam.trainer.tfenv import quiet_tensorflow
from bigearthnet_beam.transforms import flagtypes, outdir, storage
from bigearthnet_beam.transforms.cli_args import (
    add_storage_args,
    positive_int,
    storage_from_args,
    unknown_pipeline_args,
)
from bigearthnet_beam.transforms.resample import RESAMPLING_METHODS


def add_predict_args(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register the ``benbeam predict`` flags."""
    ap.add_argument(
        "--model",
        required=True,
        help="a .keras model written by `benbeam train` (path or URL), or a reBEN authors' scene classifier: "
        "a Hugging Face id ORG/NAME[@revision] (e.g. BIFOLD-BigEarthNetv2-0/resnet50-s2-v0.2.0, through the "
        "hub cache; HF_HUB_OFFLINE=1 offline) or a folder with its config.json and model.safetensors",
    )
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--tile", help="one tile: a Sentinel-2 L2A .SAFE folder or a multi-band GeoTIFF (path or URL)")
    src.add_argument("--input_dir", help="every tile in this folder or bucket prefix (--benchmark, or a Beam pipeline)")
    ap.add_argument("--out", type=flagtypes.output, required=True, help="output folder, or an s3:// / gs:// URL")
    ap.add_argument(
        "--s1", default=None, help="Sentinel-1 VV/VH raster for --tile (needed by a model trained on S2+S1 or S1)"
    )
    ap.add_argument(
        "--resampling",
        choices=RESAMPLING_METHODS,
        default=None,
        help="resampling of the 20 m and 60 m bands to 10 m (default: the training data's "
        "`benbeam convert --resampling`, recorded in the model; bilinear for older models)",
    )
    ap.add_argument(
        "--chunk_size",
        type=flagtypes.chunk_size,
        default=DEFAULTS["chunk_size"],
        help="chunk side in px, a multiple of 128; peak memory grows with its square (default: %(default)s)",
    )
    ap.add_argument(
        "--overlap",
        type=flagtypes.overlap,
        default=None,
        help=f"overlap of neighbouring 120-px windows, blended with a Hann weight (default: {DEFAULTS['overlap']}; "
        "an authors' classifier: 120 - --stride)",
    )
    add_classifier_args(ap)
    ap.add_argument(
        "--batch_size",
        type=positive_int,
        default=DEFAULTS["batch_size"],
        help="windows per model call (default: %(default)s; larger on a GPU)",
    )
    ap.add_argument("--save_probs", action="store_true", help="also write the 19-band probability cube")
    ap.add_argument(
        "--probs_dtype",
        choices=PROBS_DTYPES,
        default=DEFAULTS["probs_dtype"],
        help="uint8: round(254·p), 255 = no data; float32: exact, NaN = no data (default: %(default)s)",
    )
    ap.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="MODULE:FUNCTION",
        help="a user layer f(probs[h, w, 19]) -> 2-D array or {name: 2-D array}, written as "
        "<tile>_<name>.tif; repeatable; module may be path/to/file.py",
    )
    ap.add_argument(
        "--preview_size",
        type=positive_int,
        default=DEFAULTS["preview_size"],
        help="longest side of preview.png's map in px (default: %(default)s)",
    )
    ap.add_argument(
        "--benchmark",
        action="store_true",
        help="map the tiles one after the other, timing each: benchmark_report.csv + viewer.html",
    )
    add_storage_args(ap)
    return ap


def add_classifier_args(ap: argparse.ArgumentParser) -> None:
    """The flags of an authors' scene classifier (``--model ORG/NAME``)."""
    from bigearthnet_beam.trainer.inference.pretrained_predictor import WINDOW_MAPS

    ap.add_argument(
        "--stride",
        type=flagtypes.stride,
        default=None,
        help="authors' classifier: step of the 120-px window grid in px, 60..120, even for a model with 20 m "
        "bands (default: 120, adjacent patches); the same as --overlap 120-STRIDE",
    )
    ap.add_argument(
        "--window_map",
        choices=WINDOW_MAPS,
        default="nearest",
        help="authors' classifier: how window probabilities become pixels. nearest: those of the window "
        "whose centre is nearest (window resolution, blocks of stride px); blend: the Hann-weighted mean of "
        "every window covering the pixel (smooth) (default: %(default)s)",
    )
    ap.add_argument(
        "--device",
        default="cpu",
        help="authors' classifier: torch device, cpu or cuda[:N] (an error when torch sees no GPU) "
        "(default: %(default)s)",
    )


def resolve_overlap(args: argparse.Namespace, pretrained: bool) -> int:
    """``--overlap`` / ``--stride`` as an overlap in px; the classifier flags refused with a Keras model."""
    from bigearthnet_beam.trainer.pretrained.authors import IMAGE_SIZE

    if args.stride is not None and args.overlap is not None:
        raise PredictError("give --stride or --overlap, not both (overlap = 120 - stride)")
    if not pretrained:
        if args.stride is not None or args.device != "cpu" or args.window_map != "nearest":
            raise PredictError(
                "--stride, --window_map and --device go with an authors' classifier (--model ORG/NAME or its "
                "folder); a .keras U-Net takes --overlap and TensorFlow's own device placement"
            )
        return DEFAULTS["overlap"] if args.overlap is None else args.overlap
    if args.overlap is not None:
        return args.overlap
    stride = IMAGE_SIZE if args.stride is None else args.stride
    if stride > IMAGE_SIZE:
        raise PredictError(f"--stride must be 1..{IMAGE_SIZE} px (windows may overlap, never leave gaps), got {stride}")
    return IMAGE_SIZE - stride


COMMAND = "benbeam predict"


def _claim_out(out: str, st: storage.Storage) -> outdir.Lock:
    """Check ``--out`` can be written and holds nothing but an earlier predict's output; its lock."""
    outdir.check(out, COMMAND, st)  # before the write probe: a folder of other files is not touched
    if storage.is_remote(out):  # no lock in a bucket; a listing right after the probe may still show it
        lock = outdir.claim(out, COMMAND, st)
        staging.check_writable(out, st)
        return lock
    staging.check_writable(out, st)
    return outdir.claim(out, COMMAND, st)


def _unmark_unused(out: str, created: bool) -> None:
    """After a run that wrote nothing, the marker it left alone in a local --out goes again,
    and so does the folder itself if this run created it (no empty --out after a failure)."""
    if storage.is_remote(out) or not os.path.isdir(out):
        return
    if set(os.listdir(out)) - {outdir.LOCK} == {outdir.MARKER}:  # the lock goes when the run ends
        os.remove(os.path.join(out, outdir.MARKER))
    if created and not set(os.listdir(out)) - {outdir.LOCK}:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(out, outdir.LOCK))  # released already, unless it could not be read
        with contextlib.suppress(OSError):
            os.rmdir(out)


def _find_tiles(input_dir: str, st: storage.Storage) -> list[str]:
    tiles = staging.tiles_in(input_dir, st)
    if not tiles:
        raise PredictError(f"--input_dir {input_dir} holds no tile (.SAFE folder or GeoTIFF)")
    return tiles


def run(argv: list[str] | None = None) -> int:
    """``benbeam predict ARGV``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = flagtypes.Parser(
        prog="benbeam predict",
        allow_abbrev=False,
        description="Map whole Sentinel-2 tiles with a model trained by `benbeam train`, or with a reBEN "
        "authors' classifier from the Hugging Face Hub (--model ORG/NAME; docs/pretrained.md).",
        epilog="Beam pipeline options (--runner, ...) make --input_dir run as a Beam "
        "pipeline (the default without --benchmark: DirectRunner).",
    )
    add_predict_args(ap)
    args, beam_args = ap.parse_known_args(argv)
    if beam_args:
        unknown = unknown_pipeline_args(beam_args)
        if unknown:
            ap.error(
                f"unrecognized arguments: {' '.join(unknown)} (neither a benbeam predict flag nor an Apache "
                "Beam pipeline option; see --help)"
            )
        if args.tile or args.benchmark:
            ap.error("Beam pipeline options apply to --input_dir without --benchmark")
    from bigearthnet_beam.trainer.pretrained.model import is_pretrained_ref

    if not is_pretrained_ref(args.model):  # once the flags are accepted: a refused flag never waits for TensorFlow
        quiet_tensorflow()
    # a custom endpoint nothing answers: raised, one line and exit 3 from benbeam's CLI
    st = storage_from_args(args)
    try:
        return _run(args, beam_args, st)
    except errors.BenBeamError as e:  # PredictError 2, PredictEnvironmentError 3, OutputRefused 2, OutputBusy 3
        print(f"benbeam predict: error: {errors.redact(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("benbeam predict: interrupted; no finished output was left for the tile in progress", file=sys.stderr)
        return 130
    except OSError as e:
        if errors.exit_code(e) is not None:
            raise  # a full disk, a read-only --out: the environment (benbeam's CLI says so, exit 3)
        print(f"benbeam predict: error: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:
        print(f"benbeam predict: error: {e}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, beam_args: list[str], st: storage.Storage) -> int:
    from bigearthnet_beam.trainer.inference.grid import check_chunk_size
    from bigearthnet_beam.trainer.pretrained.model import is_pretrained_ref

    args.pretrained = is_pretrained_ref(args.model)
    args.overlap = resolve_overlap(args, args.pretrained)
    if not args.pretrained and not staging.exists(args.model, st):
        raise PredictError(f"model {args.model} does not exist")
    check_chunk_size(args.chunk_size)
    if args.s1 and not args.tile:
        raise PredictError("--s1 goes with --tile; with --input_dir each tile's S1 raster is found beside it")
    if args.tile and not staging.exists(args.tile, st):
        raise PredictError(f"tile {args.tile} does not exist")
    tiles = _find_tiles(args.input_dir, st) if args.input_dir else [args.tile]
    created = not storage.is_remote(args.out) and not os.path.lexists(args.out)
    lock = _claim_out(args.out, st)
    try:
        return _predict(args, beam_args, tiles, st)
    except BaseException:
        lock.release()
        _unmark_unused(args.out, created)
        raise
    finally:
        lock.release()


def _predict(args: argparse.Namespace, beam_args: list[str], tiles: list[str], st: storage.Storage) -> int:
    from bigearthnet_beam.trainer.inference.plugins import load_extra
    from bigearthnet_beam.trainer.inference.pretrained_predictor import RESAMPLING, WindowClassifier
    from bigearthnet_beam.trainer.inference.tile import model_resampling, predict_path, print_summary

    extras = [load_extra(s) for s in args.extra]
    if args.resampling is None:
        args.resampling = RESAMPLING if args.pretrained else model_resampling(args.model, st)
    settings = dict(
        chunk_size=args.chunk_size,
        save_probs=args.save_probs,
        probs_dtype=args.probs_dtype,
        preview_size=args.preview_size,
        resampling=args.resampling,
    )
    outdir.mark(args.out, COMMAND, st)  # every check passed: the folder is this command's from now on
    if args.input_dir and not args.benchmark:
        from bigearthnet_beam.trainer.inference.beam import run_pipeline

        if args.pretrained:
            settings.update(device=args.device, window_map=args.window_map)
        return run_pipeline(
            model=args.model,
            tiles=tiles,
            out=args.out,
            batch_size=args.batch_size,
            overlap=args.overlap,
            extras=list(args.extra),
            beam_args=beam_args,
            st=st,
            **settings,
        )
    if args.pretrained:
        predictor = WindowClassifier.load(
            args.model,
            device=args.device,
            batch_size=args.batch_size,
            overlap=args.overlap,
            window_map=args.window_map,
        )
    else:
        from bigearthnet_beam.trainer.inference.predictor import Predictor

        predictor = Predictor.load(args.model, st, batch_size=args.batch_size, overlap=args.overlap)
    with staging.local_folder(args.out, st) as out_dir:
        if args.benchmark:
            from bigearthnet_beam.trainer.inference.benchmark import benchmark

            s1_for = (lambda path: staging.s1_sidecar(path, st)) if predictor.needs_s1 else None
            results = benchmark(predictor, tiles, out_dir, extras=extras, s1_for=s1_for, st=st, **settings)
        else:
            s = predict_path(predictor, args.tile, out_dir, s1=args.s1, extras=extras, st=st, **settings)
    if args.benchmark:
        ok = [r for r in results if not r.get("failed")]
        for s in ok:
            print_summary(s, storage.join(args.out, s["dir"]))
        print(f"wrote {storage.join(args.out, REPORT_CSV)} and {storage.join(args.out, VIEWER)}")
        return 0 if len(ok) == len(results) else 1
    print_summary(s, args.out)
    return 0
