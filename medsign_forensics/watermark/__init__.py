"""Watermark core: HiDDeN extractor, attacks, whitening, losses, training, detection statistics, baselines."""
