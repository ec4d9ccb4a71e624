"""dedup's own copy-detection model: architecture and loading (model.py), training (train.py), augmentations."""
