"""Search engines behind the catalogue's interface (see indexer.catalogue.Engine)."""
