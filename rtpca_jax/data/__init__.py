"""Datasets: joint layouts, camera geometry, file readers and the tf.data pipeline."""
