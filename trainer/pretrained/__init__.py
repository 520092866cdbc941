"""The reBEN authors' published BigEarthNet v2.0 classifiers (``configilm`` / ``timm`` format).

authors      their input/output contract: band order per channel count, nearest upsampling,
             the "120_nearest" statistics, the lexicographic class order (numpy only)
timm_import  importing timm beside a CPU torch whose torchvision cannot load its operators
model        ``load(ref)``: a folder or a hub id through the Hugging Face cache → ``PretrainedModel``
evaluate     ``benbeam evaluate --model ORG/NAME``: scene-level multi-label metrics on a converted split
"""
