"""Conventions of whole Sentinel-2 tiles that ``benbeam synth-tile`` writes and ``benbeam predict``
reads (``synth.tiles`` and ``trainer.tiles``): metadata files, the DN offset of processing
baseline >= 04.00, and the sidecar rasters beside a tile."""

from __future__ import annotations

# Product metadata at the top of a .SAFE folder (Level-2A, Level-1C).
MTD_FILES = ("MTD_MSIL2A.xml", "MTD_MSIL1C.xml")
# Processing baseline >= 04.00 (N0400): stored DN = reflectance x 10,000 - BOA_ADD_OFFSET (L2A;
# RADIO_ADD_OFFSET in L1C), i.e. reflectance = (DN + offset) / 10,000.
OFFSET_BASELINE = 400
DN_ADD_OFFSET = -1000
# Rasters beside a tile that are not tiles: <stem>_s1.tif (co-registered S1, VV/VH dB) and
# <stem>_truth.tif (synthetic ground truth).
S1_SIDECAR = "_s1"
TRUTH_SIDECAR = "_truth"
SIDECAR_SUFFIXES = (S1_SIDECAR, TRUTH_SIDECAR)
