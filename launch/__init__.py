"""Submission of ``benbeam convert`` to distributed runners (Dataflow, Flink, Spark, any
portable job service, Dask): turn a few user-facing flags into Beam pipeline options."""
