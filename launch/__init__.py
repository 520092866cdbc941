"""Submission of ``benbeam convert`` to distributed runners (Dataflow, Flink, Spark, any
portable job service, Dask): the pipeline options of each (``submit``), the wheel staged for
the workers (``staging``) and the worker image's pins (``make_constraints``). Imports no
other part of the project; ``beam_pipeline.launch_cmd`` is the command."""
