"""The portal: accounts, search, reading and download, and the CLI."""
