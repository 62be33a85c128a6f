"""Self-contained studies reproducing a paper's toy experiment (``byzbench <study>`` commands)."""
