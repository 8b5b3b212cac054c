"""The NeuroSQL method itself: quantile lattices, the assignment step, the loss and the generator."""
