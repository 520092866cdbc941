"""``LayerWriter``: the GeoTIFFs of one tile, written chunk by chunk under temporary names, then
made Cloud-Optimised GeoTIFFs.

Each layer is first written as a tiled, deflate-compressed GeoTIFF, one chunk at a time (the
chunk size is a multiple of the block size: a block is compressed once). ``commit`` then
copies every layer through GDAL's COG driver, which adds overviews (halving until a level
fits one block; nearest for the class map, average for the rest, nodata excluded) and lays
the file out as a COG (IFDs first, overviews before the full resolution), block by block
through GDAL's bounded cache, so memory stays bounded by the chunk, not the tile.
"""

from __future__ import annotations

import os

import numpy as np

from bigearthnet_beam.trainer.inference.grid import Chunk

GDAL_CACHE_MB = 64  # GDAL's block cache: bounded, so dirty output blocks never grow with the tile
CATEGORICAL_RESAMPLING = "NEAREST"  # overviews of class ids: an id that exists, never an average
CONTINUOUS_RESAMPLING = "AVERAGE"  # overviews of probabilities and the other float layers


class LayerWriter:
    """Open GeoTIFFs of one tile, written chunk by chunk under temporary names; ``commit``
    turns them into COGs and renames them all (an interrupted run leaves no finished-looking output)."""

    def __init__(self, out_dir: str, stem: str, *, crs, transform, width: int, height: int, block: int):
        self.out_dir, self.stem = out_dir, stem
        self.base = dict(
            driver="GTiff",
            width=width,
            height=height,
            crs=crs,
            transform=transform,
            tiled=True,
            blockxsize=block,
            blockysize=block,
            compress="deflate",
            BIGTIFF="IF_SAFER",
        )
        self.block = block
        self.datasets: dict = {}
        self.tmp: dict[str, str] = {}  # file name -> temporary path
        self.overview_resampling: dict[str, str] = {}  # GeoTIFF file name -> GDAL resampling of its overviews

    def path(self, fname: str) -> str:
        """Final path of ``fname`` in the output folder."""
        return os.path.join(self.out_dir, fname)

    def tmp_path(self, fname: str) -> str:
        """Temporary path of ``fname`` (renamed to ``path`` by ``commit``)."""
        p = os.path.join(self.out_dir, f".tmp-{os.getpid()}-{fname}")
        self.tmp[fname] = p
        return p

    def open(
        self,
        layer: str,
        *,
        dtype: str,
        nodata,
        count: int = 1,
        descriptions=None,
        colormap=None,
        tags=None,
        categorical: bool = False,
    ) -> None:
        """Create ``<stem>_<layer>.tif`` (tiled, deflate, the tile's grid) under a temporary name;
        ``categorical``: its overviews pick values (nearest) instead of averaging them."""
        import rasterio

        fname = f"{self.stem}_{layer}.tif"
        self.overview_resampling[fname] = CATEGORICAL_RESAMPLING if categorical else CONTINUOUS_RESAMPLING
        prof = dict(
            self.base,
            dtype=dtype,
            count=count,
            nodata=nodata,
            predictor=3 if dtype == "float32" else 2,
            interleave="pixel" if count > 1 else "band",
        )
        ds = rasterio.open(self.tmp_path(fname), "w", **prof)
        if descriptions:
            for i, d in enumerate(descriptions, 1):
                ds.set_band_description(i, d)
        if colormap:
            ds.write_colormap(1, colormap)
        if tags:
            ds.update_tags(**tags)
        self.datasets[layer] = ds

    def write(self, layer: str, chunk: Chunk, arr: np.ndarray) -> None:
        """Write a chunk's (h, w) or (h, w, bands) array into its window of ``layer``."""
        from rasterio.windows import Window

        win = Window(chunk.col_off, chunk.row_off, chunk.width, chunk.height)
        ds = self.datasets[layer]
        if arr.ndim == 2:
            ds.write(arr, 1, window=win)
        else:
            ds.write(np.moveaxis(arr, -1, 0), window=win)

    def close(self) -> None:
        """Close every open GeoTIFF (their blocks are flushed)."""
        for ds in self.datasets.values():
            if not ds.closed:
                ds.close()

    def write_file(self, fname: str, data: bytes) -> None:
        """Write a whole small file (JSON) under its temporary name."""
        with open(self.tmp_path(fname), "wb") as fh:
            fh.write(data)

    def write_sidecar(self, fname: str, data: bytes) -> None:
        """Write a small file beside the maps (a QGIS style, a GDAL ``.aux.xml``) under a temporary name
        that GDAL does not take for a temporary GeoTIFF's own sidecar; renamed by ``commit``."""
        tmp = os.path.join(self.out_dir, f".tmp-{os.getpid()}-sidecar-{fname}")
        self.tmp[fname] = tmp
        with open(tmp, "wb") as fh:
            fh.write(data)

    def commit(self) -> list[str]:
        """Close everything, make each GeoTIFF a COG, and rename each file to its final name;
        returns the file names."""
        self.close()
        for fname in list(self.overview_resampling):
            self._to_cog(fname)
        done = []
        for fname, tmp in self.tmp.items():
            os.replace(tmp, self.path(fname))
            done.append(fname)
        self.tmp = {}
        return done

    def _to_cog(self, fname: str) -> None:
        """Replace the temporary GeoTIFF of ``fname`` by its COG copy (GDAL's COG driver)."""
        from rasterio.shutil import copy as gdal_copy

        src = self.tmp[fname]
        cog = os.path.join(self.out_dir, f".tmp-{os.getpid()}-cog-{fname}")
        self.tmp[f"{fname} (cog)"] = cog  # removed by abort if the copy fails
        gdal_copy(
            src,
            cog,
            driver="COG",
            COMPRESS="DEFLATE",
            PREDICTOR="YES",
            BLOCKSIZE=self.block,
            RESAMPLING=self.overview_resampling[fname],
            BIGTIFF="IF_SAFER",
        )
        os.remove(src)
        self.tmp[fname] = self.tmp.pop(f"{fname} (cog)")

    def abort(self) -> None:
        """Close everything and remove the temporary files."""
        self.close()
        for tmp in self.tmp.values():
            try:
                os.remove(tmp)
            except OSError:
                pass
        self.tmp = {}
