"""The recognition head (numpy only): prototype tables, projection, calibration, OOD scores and routing at run time
(``model``, ``prototypes``, ``projection``, ``calibration``, ``ood``, ``routing``), and its fitting at build time
(``fit``, with ``folds``, ``selection`` and ``simulate``)."""
