"""The fast CPU backend and deployment formats: export to TorchScript/ONNX (``export``), ONNX Runtime
sessions (``session``), the cached, checked export the ``Stylizer`` runs (``backend``), exact tiling of the
exported graph (``tiling``) and the memory budget that decides between untiled and tiled (``memory``)."""
