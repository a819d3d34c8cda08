"""The connector interface (base.py) and the Kafka publishing all connectors share."""
