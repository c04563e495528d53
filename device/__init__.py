"""The agent on each Pi: identity, bundle installation, ztunnel supervision and LEDs."""
