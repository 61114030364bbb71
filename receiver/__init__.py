"""The edge where HTTP comes in: signature, intake, event store, admin."""
