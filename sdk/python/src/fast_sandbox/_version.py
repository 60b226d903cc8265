"""The package version, kept equal to the Rust workspace's (root Cargo.toml)."""

__version__ = "0.1.0"
