//! The README's Performance section, replaced between its markers.

use anyhow::{bail, Result};

pub const BEGIN: &str = "<!-- bench:begin -->";
pub const END: &str = "<!-- bench:end -->";

/// `readme` with what stands between [`BEGIN`] and [`END`] replaced by
/// `section`; the markers stay.
pub fn splice(readme: &str, section: &str) -> Result<String> {
    let (Some(begin), Some(end)) = (readme.find(BEGIN), readme.find(END)) else {
        bail!("README.md has no `{BEGIN}` … `{END}` markers");
    };
    if end < begin {
        bail!("README.md has `{END}` before `{BEGIN}`");
    }
    let inside = begin + BEGIN.len();
    Ok(format!(
        "{}\n{}{}",
        &readme[..inside],
        section,
        &readme[end..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_what_is_between_the_markers() {
        let readme = "# x\n\n## Performance\n\n<!-- bench:begin -->\nold\ntable\n<!-- bench:end -->\n\n## Next\n";
        assert_eq!(
            splice(readme, "new\n").unwrap(),
            "# x\n\n## Performance\n\n<!-- bench:begin -->\nnew\n<!-- bench:end -->\n\n## Next\n"
        );
        let empty = "<!-- bench:begin --><!-- bench:end -->";
        assert_eq!(
            splice(empty, "a\n").unwrap(),
            "<!-- bench:begin -->\na\n<!-- bench:end -->"
        );
    }

    #[test]
    fn refuses_a_readme_without_markers() {
        assert!(splice("# x\n", "new\n").is_err());
        assert!(splice("<!-- bench:begin -->\n", "new\n").is_err());
        assert!(splice("<!-- bench:end -->\n<!-- bench:begin -->\n", "new\n").is_err());
    }
}
