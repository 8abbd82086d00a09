//! Rebuilding the catalog from tapes.
