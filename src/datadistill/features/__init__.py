"""Features of real images: frozen backbones, the cached feature bank of the statistics pass, k-means, coverage."""
