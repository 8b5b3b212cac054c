"""Files nsql-med reads and writes: atomic writes, geometry, synthetic NIfTI, the model folder."""
