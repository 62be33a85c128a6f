"""byzbench: stress-testing Byzantine-robust distributed and federated learning."""

__version__ = "0.1.0"
