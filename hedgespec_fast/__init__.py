"""hedgespec-fast."""
