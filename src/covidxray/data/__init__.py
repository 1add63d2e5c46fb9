"""Datasets: reading images, finding labelled files, splitting, and the decode-once cache."""
