//! End-to-end tests live beside this file, one file per area.
