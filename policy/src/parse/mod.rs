//! Strict parsers. INTERFACE SKELETON — filled in by the dialect work.
