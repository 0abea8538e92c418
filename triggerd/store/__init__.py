"""Durable storage of BuildConfigs, Builds and webhook deliveries."""
