"""Input pipeline: samplers, augmentation and grain datasets."""
