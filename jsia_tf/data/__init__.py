"""Datasets: synthetic RGB-IR pedestrians, RegDB and SYSU-MM01 readers, tf.data pipeline."""
