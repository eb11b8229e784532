"""Networks and their loaders: from-scratch classifiers (ConvNet, ResNet) by name, and the generative networks."""
