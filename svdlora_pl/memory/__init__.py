"""The memory plan of a training config on one device (``svdlora estimate-memory``)."""
