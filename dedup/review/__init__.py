"""`dedup review`: look at a run's pairs and groups in the browser, label pairs, and have select and calibrate
use the labels (dedup/io/labels.py holds the file they share)."""
