"""``benbeam predict``: map whole Sentinel-2 tiles with a trained U-Net (or a reBEN authors' scene
classifier, ``--model ORG/NAME``: see ``pretrained_predictor``).

A tile (an L2A ``.SAFE`` folder or a multi-band GeoTIFF, on local disk or in ``s3://`` /
``gs://``; read through ``trainer.tiles``) is processed chunk by chunk; every chunk runs the
model on every window of one *global* sliding-window grid that touches it and blends the
windows' softmax with a smooth weight, so the result does not depend on the chunk size
(chunked = unchunked up to float summation order) and no seam appears at window or chunk
borders. Peak memory is bounded by the chunk size, never by the tile size. Per tile it
writes, keeping the tile's CRS and transform, Cloud-Optimised GeoTIFFs (tiles, overviews):

    <tile>_class.tif      uint8 class id (0..18), 255 = no data
    <tile>_maxprob.tif    float32 max_k p_k                     (NaN = no data)
    <tile>_entropy.tif    float32 −Σ p_k ln p_k, natural log     (NaN = no data)
    <tile>_gap.tif        float32 top-1 minus top-2 probability  (NaN = no data)
    <tile>_probs.tif      19 bands, with --save_probs (uint8 round(254·p), 255 = no data; or float32)
    <tile>_<name>.tif     float32 layers of --extra functions    (NaN = no data)
    <tile>_classmap.json  id → name and RGB colour, nodata 255, what each layer means
    <tile>_summary.json   what went in and came out: pixels, classes, time, peak memory, device
    <tile>_class.tif.aux.xml  GDAL category names and attribute table of the class map
    <tile>_<layer>.qml    QGIS styles: the class palette; ramps for maxprob, entropy, gap
    <tile>_item.json      STAC item (proj, raster, classification; every output an asset)
    preview.png           colour-coded class map (≤ --preview_size px) with a legend

One module per concern (imports point down this list, never up):

    settings   PredictError, defaults, output file names, PredictSettings (what a run needs)
    grid       the window grid, the chunk grid and the blending weights (numpy)
    layers     the per-pixel layers of a probability cube, the class map's colours (numpy)
    styles     GDAL categories / attribute table and QGIS styles of the maps (plain text)
    plugins    --extra user layer functions
    memory     peak RSS probe and device name
    predictor  Predictor: the model with its inference contract; one chunk's blended softmax
    pretrained_predictor  WindowClassifier: a reBEN authors' scene classifier (--model ORG/NAME):
               per-window probabilities, nearest or blended maps, multi-label layers
    writer     LayerWriter: the GeoTIFFs of one tile, chunk by chunk, under temporary names, then COGs
    preview    preview.png
    viewer     viewer.html over many tiles
    staging    tiles in and maps out of s3:// / gs:// through a local temporary folder
    stac       STAC item per tile, collection per --benchmark (pystac)
    tile       one tile: predict_tile / predict_path, the summary
    benchmark  many tiles one after the other, benchmark_report.csv
    beam       many tiles as a Beam pipeline (one model load per worker)
    pretrained_beam  the same for an authors' classifier, windows through Beam's RunInference
    cli        ``benbeam predict`` (``run(argv)``)
"""
