"""The metadata XML of a synthetic ``.SAFE`` product (``synth.tiles``): a minimal subset of the real
``MTD_MSIL2A.xml`` / ``MTD_MSIL1C.xml`` and ``GRANULE/*/MTD_TL.xml`` that ``trainer.tiles`` reads
(band ids, the baseline's DN offsets) and a person recognises."""

from __future__ import annotations

import os

from bigearthnet_beam.schemas.bands import S2_PRODUCT_NAMES, S2_PRODUCT_RESOLUTION_M
from bigearthnet_beam.schemas.tiles import DN_ADD_OFFSET

BASELINE = "05.10"  # processing baseline written into the names and metadata (>= 04.00: DN offset)


def _iso(date: str) -> str:
    return f"{date[:4]}-{date[4:6]}-{date[6:8]}T{date[9:11]}:{date[11:13]}:{date[13:15]}.024Z"


def mtd_product(level: str, nm: dict, date: str, files: list[str], ext: str) -> str:
    """The product's MTD_MSIL2A.xml / MTD_MSIL1C.xml: band ids, DN offsets, image files."""
    phys = [n if n == "B8A" else f"B{int(n[1:])}" for n in S2_PRODUCT_NAMES]  # B01 -> B1, as the MTD spells it
    res = [S2_PRODUCT_RESOLUTION_M[n] for n in S2_PRODUCT_NAMES]
    spectral = "\n".join(
        f'        <Spectral_Information bandId="{i}" physicalBand="{p}"><RESOLUTION>{r}</RESOLUTION>'
        f"</Spectral_Information>"
        for i, (p, r) in enumerate(zip(phys, res, strict=True))
    )
    tag, qtag = (
        ("BOA_ADD_OFFSET", '<BOA_QUANTIFICATION_VALUE unit="none">10000</BOA_QUANTIFICATION_VALUE>')
        if level == "L2A"
        else ("RADIO_ADD_OFFSET", '<QUANTIFICATION_VALUE unit="none">10000</QUANTIFICATION_VALUE>')
    )
    offs = "\n".join(f'        <{tag} band_id="{i}">{DN_ADD_OFFSET}</{tag}>' for i in range(13))
    offs = (
        f"      <BOA_ADD_OFFSET_VALUES_LIST>\n{offs}\n      </BOA_ADD_OFFSET_VALUES_LIST>"
        if level == "L2A"
        else f"      <Radiometric_Offset_List>\n{offs}\n      </Radiometric_Offset_List>"
    )
    img = "\n".join(f"            <IMAGE_FILE>{os.path.splitext(f)[0]}</IMAGE_FILE>" for f in files)
    root = "Level-2A_User_Product" if level == "L2A" else "Level-1C_User_Product"
    ptype = "S2MSI2A" if level == "L2A" else "S2MSI1C"
    fmt = "JPEG2000" if ext == ".jp2" else "GeoTIFF"
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- synthetic product written by benbeam synth-tile: a minimal subset of the real metadata -->
<n1:{root} xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_{root.split("_")[0]}.xsd">
  <n1:General_Info>
    <Product_Info>
      <PRODUCT_START_TIME>{_iso(date)}</PRODUCT_START_TIME>
      <PRODUCT_STOP_TIME>{_iso(date)}</PRODUCT_STOP_TIME>
      <PRODUCT_URI>{nm["safe"]}</PRODUCT_URI>
      <PROCESSING_LEVEL>Level-{level[1:]}</PROCESSING_LEVEL>
      <PRODUCT_TYPE>{ptype}</PRODUCT_TYPE>
      <PROCESSING_BASELINE>{BASELINE}</PROCESSING_BASELINE>
      <GENERATION_TIME>{_iso(nm["gen"])}</GENERATION_TIME>
      <Datatake datatakeIdentifier="GS2A_{date}_047373_N{BASELINE}">
        <SPACECRAFT_NAME>Sentinel-2A</SPACECRAFT_NAME>
        <SENSING_ORBIT_NUMBER>22</SENSING_ORBIT_NUMBER>
      </Datatake>
      <Product_Organisation>
        <Granule_List>
          <Granule granuleIdentifier="{nm["granule"]}" imageFormat="{fmt}">
{img}
          </Granule>
        </Granule_List>
      </Product_Organisation>
    </Product_Info>
    <Product_Image_Characteristics>
      <Special_Values><SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT>
        <SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX></Special_Values>
      <Special_Values><SPECIAL_VALUE_TEXT>SATURATED</SPECIAL_VALUE_TEXT>
        <SPECIAL_VALUE_INDEX>65535</SPECIAL_VALUE_INDEX></Special_Values>
      <QUANTIFICATION_VALUES_LIST>{qtag}</QUANTIFICATION_VALUES_LIST>
{offs}
      <Spectral_Information_List>
{spectral}
      </Spectral_Information_List>
    </Product_Image_Characteristics>
  </n1:General_Info>
</n1:{root}>
"""


def mtd_tile(level: str, nm: dict, date: str, epsg: int, x0: float, y0: float, size: int) -> str:
    """The granule's MTD_TL.xml: tile id, sensing time, CRS and geoposition per resolution."""
    sizes = "\n".join(
        f'        <Size resolution="{r}"><NROWS>{size * 10 // r}</NROWS><NCOLS>{size * 10 // r}</NCOLS></Size>'
        for r in (10, 20, 60)
    )
    geo = "\n".join(
        f'        <Geoposition resolution="{r}"><ULX>{x0:.0f}</ULX><ULY>{y0:.0f}</ULY><XDIM>{r}</XDIM>'
        f"<YDIM>-{r}</YDIM></Geoposition>"
        for r in (10, 20, 60)
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- synthetic granule metadata written by benbeam synth-tile -->
<n1:Level-{level[1:]}_Tile_ID
    xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/S2_PDI_Level-{level[1:]}_Tile_Metadata.xsd">
  <n1:General_Info>
    <TILE_ID>{nm["granule"]}</TILE_ID>
    <SENSING_TIME>{_iso(date)}</SENSING_TIME>
  </n1:General_Info>
  <n1:Geometric_Info>
    <Tile_Geocoding>
      <HORIZONTAL_CS_NAME>WGS84 / UTM zone {epsg - 32600}N</HORIZONTAL_CS_NAME>
      <HORIZONTAL_CS_CODE>EPSG:{epsg}</HORIZONTAL_CS_CODE>
{sizes}
{geo}
    </Tile_Geocoding>
  </n1:Geometric_Info>
</n1:Level-{level[1:]}_Tile_ID>
"""
