"""Object detection: the ``Detector`` interface and its registry, the ultralytics backend, the
runtime plan (format, device, precision) and the GPU memory budget."""
