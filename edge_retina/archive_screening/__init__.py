"""Archive-scale screening on Ray Data: re-screen millions of stored photographs with a bundle.

``edge-retina archive screen`` lists the photographs (sources.py), leaves out those already in the
results with the same bundle (results.py), and screens the rest on a pool of Ray actors, each holding
one verified bundle and one :class:`~edge_retina.screener.Screener` (worker.py); the driver streams
their rows into a Parquet dataset, part file by part file (run.py). ``archive summary`` reads the
dataset back (summary.py). Needs the ``archive`` extra (Ray Data, pyarrow); not part of the device
runtime, which never imports this package.
"""
