"""The Kafka edge: consumer group, per-partition workers, outbound topics, restore."""
