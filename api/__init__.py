"""HTTP API. Routes stay thin: validation here, queries in ``store``, workflows via handles."""
