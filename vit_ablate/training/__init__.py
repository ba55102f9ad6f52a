"""Training: the LightningModule, the run driver and its callbacks."""
