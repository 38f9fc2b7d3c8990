//! Update masks (AIP-134): which fields an update touches.

use crate::error::Violations;
use crate::validate;

/// The paths an update applies: those of `mask`, checked against `mutable` (with a clear
/// violation for immutable or unknown ones); or, for an empty mask, every mutable path that
/// `is_set` (AIP-134's implied mask).
pub fn effective_paths<'a>(
    v: &mut Violations,
    mask: &[String],
    mutable: &'a [&'a str],
    immutable: &[&str],
    is_set: impl Fn(&str) -> bool,
) -> Vec<&'a str> {
    if mask.is_empty() {
        return mutable.iter().copied().filter(|p| is_set(p)).collect();
    }
    let mut out = Vec::new();
    for (i, path) in mask.iter().enumerate() {
        if let Some(p) = mutable.iter().find(|m| **m == path.as_str()) {
            if !out.contains(p) {
                out.push(*p);
            }
        } else if immutable.contains(&path.as_str()) {
            v.add(
                format!("update_mask.paths[{i}]"),
                format!("{path:?} cannot be changed; the paths that can are {}", mutable.join(", ")),
            );
        } else {
            v.add(
                format!("update_mask.paths[{i}]"),
                format!(
                    "{:?} is not a field; the paths that can be changed are {}",
                    validate::truncate(path, 80),
                    mutable.join(", ")
                ),
            );
        }
    }
    out
}
