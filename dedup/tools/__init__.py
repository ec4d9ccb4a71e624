"""Tools around a run: the report, threshold calibration, the demo data, planting known duplicates, and downloading with img2dataset."""
