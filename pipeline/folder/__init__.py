"""The artifact folder: its manifest, its verdict records, its audit, the line that re-makes it."""
