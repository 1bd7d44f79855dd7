"""hrstyle: photorealistic style transfer with the high-resolution network (HRNet).

Layout: ``models`` (the generator), ``losses`` (VGG loss network, Gram/content/TV losses),
``data`` (content photos, image I/O), ``training`` (LightningModule, ``train(cfg)``),
``inference`` (``Stylizer``, exact tiling, export).
"""

__version__ = "0.1.0"
