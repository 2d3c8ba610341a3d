"""The decision core, plain Python with no I/O: normalise the URL, identify who asks, classify what it is, decide."""
