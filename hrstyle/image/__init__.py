"""Image operations shared by training, inference and evaluation: I/O (``io``), colour statistics and
the colour match (``color``), the guided filter (``guided``) and the working resolution's lift (``lift``)."""
