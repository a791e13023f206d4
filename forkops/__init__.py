"""forkops: keep private TensorFlow and TensorFlow Serving forks current with upstream."""

__version__ = "0.1.0"
