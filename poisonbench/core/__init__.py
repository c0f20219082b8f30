"""The foundations every wing stands on: errors, the registry and parameters, hashing, atomic files, the
device, seeds, the results workspace and provenance."""
