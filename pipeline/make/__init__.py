"""Making a folder: export's options, its steps (graphs, engines), the int8 search."""
