"""Model families in pure PyTorch (needs the [models] extra). The runtime path never imports this package."""
