"""The experiment: its config, the resumable runner, run logs read from TensorBoard, provenance, the comparison and
its report (``svdlora experiment``, ``svdlora compare``)."""
