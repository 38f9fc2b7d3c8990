//! Real peers: find them, or skip (printing why) or fail when `POSTERN_REQUIRE_PEERS=1`.

use std::process::Command;

pub use postern_common::testing::{TestDatabase, missing, postgres, required};

/// Whether a command runs (`grpcurl -version`), or `None` after reporting it missing.
pub fn command(test: &str, program: &str, probe_arg: &str) -> Option<()> {
    match Command::new(program).arg(probe_arg).output() {
        Ok(_) => Some(()),
        Err(_) => {
            missing(test, &format!("{program} is not installed"));
            None
        }
    }
}
