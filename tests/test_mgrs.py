"""The synthetic replica places every MGRS tile where its name says (``synth.generator.tile_origin``).

Checked independently of the product's formula: PROJ (through rasterio) turns the tile's UTM
corners into latitudes, and the MGRS letters of a point are recomputed forward from its UTM
coordinates (column letter from the easting, row letter from the northing with the even-zone
shift, latitude band from PROJ's latitude), the reverse direction of what the product does.
"""

from importlib import resources

import pyarrow.parquet as pq
import pytest
from rasterio.warp import transform

from bigearthnet_beam.synth.generator import CLEAN, SNOW_CLOUD, patch_origin, square_origin, tile_origin

BANDS = "CDEFGHJKLMNPQRSTUVWX"
COLUMNS = ("ABCDEFGH", "JKLMNPQR", "STUVWXYZ")
ROWS = "ABCDEFGHJKLMNPQRSTUV"


def _vendored_tiles() -> list[str]:
    tiles = set()
    for name in (CLEAN, SNOW_CLOUD):
        with resources.as_file(resources.files("bigearthnet_beam.synth") / "data" / name) as path:
            ids = pq.read_table(path, columns=["patch_id"]).column("patch_id").to_pylist()
        tiles |= {pid.rsplit("_", 2)[0].rsplit("_", 1)[1][1:] for pid in ids}
    return sorted(tiles)


TILES = _vendored_tiles()


def _latlon(zone: int, xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    lon, lat = transform(f"EPSG:{32600 + zone}", "EPSG:4326", xs, ys)
    return lat, lon


def mgrs_of(zone: int, x: float, y: float) -> str:
    """The MGRS tile id (zone, band, square letters) of a UTM point, computed forward."""
    (lat,), _ = _latlon(zone, [x], [y])
    band = BANDS[min(int((lat + 80) // 8), len(BANDS) - 1)]
    col = COLUMNS[(zone - 1) % 3][int(x // 100_000) - 1]
    row = ROWS[(int(y // 100_000) + (5 if zone % 2 == 0 else 0)) % 20]
    return f"{zone}{band}{col}{row}"


def band_range(band: str) -> tuple[float, float]:
    south = -80 + 8 * BANDS.index(band)
    return south, south + (12 if band == "X" else 8)


def test_the_metadata_names_the_tiles_of_genuine_reben():
    assert len(TILES) == 54 and "32TMT" in TILES and "34VER" in TILES


@pytest.mark.parametrize("tile", TILES)
def test_every_vendored_tile_lies_in_its_band_with_its_square_letters(tile):
    check_tile(tile)


def test_synth_tile_names_walk_within_the_band():
    from bigearthnet_beam.synth.tiles import tile_ids

    ids = tile_ids(80)
    assert len(set(ids)) == 80 and ids[:2] == ["32TQR", "32TRR"]
    for tile in ids:
        check_tile(tile)
    with pytest.raises(ValueError, match="at most 80"):
        tile_ids(81)
    with pytest.raises(ValueError, match="latitude band T"):
        tile_ids(1, first="32TQA")  # row A of zone 32 lies near 3,500 km north: band S


def check_tile(tile: str) -> None:
    """The tile's 100 km square meets its latitude band, and a point of it inside the band has its name."""
    zone, band = int(tile[:2]), tile[2]
    x0, y0 = tile_origin(zone, tile[2:])
    assert (x0, y0 - 100_000) == square_origin(zone, tile[2:])
    assert x0 % 100_000 == 0 and y0 % 100_000 == 0  # on the 100 km grid
    # the 100 km square: its four corners' latitudes (PROJ)
    lat, _ = _latlon(zone, [x0, x0 + 1e5, x0, x0 + 1e5], [y0, y0, y0 - 1e5, y0 - 1e5])
    south, north = band_range(band)
    assert min(lat) < north and max(lat) > south, (tile, lat, (south, north))  # the square meets its band
    # its origin lies in its band, or within 1 degree of it for a square across the edge (34VER: 64.03 N)
    assert south - 1.0 < lat[0] < north + 1.0
    # a point of the square inside the band has exactly the tile's MGRS name
    cx = x0 + 50_000
    for cy in (y0 - 50_000, y0 - 1_000, y0 - 99_000):
        (la,), _ = _latlon(zone, [cx], [cy])
        if south <= la < north:
            assert mgrs_of(zone, cx, cy) == tile
            break
    else:
        pytest.fail(f"{tile}: no test point of the square lies in band {band}")


def test_the_issues_examples_and_even_zones_sit_in_their_bands():
    for tile, (south, north) in (("32TMT", (40, 48)), ("34VER", (56, 64)), ("34TEN", (40, 48))):
        zone = int(tile[:2])
        x0, y0 = tile_origin(zone, tile[2:])
        (lat,), _ = _latlon(zone, [x0 + 50_000], [y0 - 50_000])  # the square's centre
        assert south <= lat < north, (tile, lat)


def test_patches_of_a_tile_share_its_square():
    pid = "S2A_MSIL2A_20170613T101031_N9999_R022_T32TMT_75_43"
    x, y = patch_origin(pid)
    assert mgrs_of(32, x + 600, y - 600) == "32TMT"


def test_bad_letters_are_refused():
    with pytest.raises(ValueError, match="not a 100 km square"):
        tile_origin(33, "UAP")  # A is a column letter of zones 1, 4, ... not of zone 33
    with pytest.raises(ValueError, match="latitude band"):
        tile_origin(33, "IUP")
